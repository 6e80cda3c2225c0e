"""Federated studies: one study run at several sites, and only what its
workflow declares shareable leaves a site (see docs/architecture.md).

Built so far: the egress gate (:mod:`.egress`), the one way a round's
results leave a site, and its audit (:mod:`.audit`); the site's policy (:mod:`.policy`), which decides
whether a round may run there at all; and the coordinator's aggregation
(:mod:`.aggregate`). The coordinator, the site agent and
their transport (Flower) come next.
"""
