"""Federated studies: one study run at several sites, and only what its
workflow declares shareable leaves a site (see docs/architecture.md).

Built so far, at a site: the egress gate (:mod:`.egress`), the one way a
round's results leave it, and its audit (:mod:`.audit`); the site's policy
(:mod:`.policy`), which decides whether a round may run there at all; and a
round run as a job of the study's own user (:mod:`.site`). At the
coordinator: the aggregation (:mod:`.aggregate`). The transport between
them (Flower: the site agent's SuperNode and the coordinator's SuperLink)
comes next.
"""
