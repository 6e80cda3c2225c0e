"""Headless Chromium (Debian's package) driven by Playwright, logged in to
the real hub as a user with a notebook in their home; screenshots and
timings go to tests/.artifacts/ (and one on any failure)."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import nbformat

ARTIFACTS = Path(__file__).resolve().parent / ".artifacts"
CHROMIUM = "/usr/bin/chromium"


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"])


@contextlib.contextmanager
def notebook_page(stack, browser, user: str, projects: list[str] | None, name: str,
                  cells: list[str]):
    """A new user in ``projects`` (None: a demo user of ``up --demo``, alice
    or bob, with the password kept for them) with a notebook of ``cells``,
    opened in JupyterLab with its kernel idle; yields the page."""
    if projects is None:
        logins = json.loads((stack.home.secrets_dir / "demo_logins.json").read_text())
        password = logins[user]
    else:
        args = [a for p in projects for a in ("--project", p)]
        out = stack.cli("users", "add", user, *args).stdout
        password = re.search(r"password: (\S+)", out).group(1)
    home = stack.user_home(user)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "imaging", "display_name": "Imaging (Python 3)",
                                 "language": "python"}
    nbformat.write(nb, home / f"{name}.ipynb")
    stack.give(user, home / f"{name}.ipynb")
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(f"{stack.url}/hub/login")
        page.fill("#username_input", user)
        page.fill("#password_input", password)
        page.click("#login_submit")
        page.wait_for_url(f"**/user/{user}/lab**", timeout=120_000)
        page.goto(f"{stack.url}/user/{user}/lab/tree/{name}.ipynb?reset")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        page.wait_for_selector("text=/Imaging \\(Python 3\\) \\| Idle/", timeout=120_000)
        yield page
    except Exception:
        page.screenshot(path=str(ARTIFACTS / f"{name}-failure.png"))
        (ARTIFACTS / f"{name}-console.txt").write_text("\n".join(errors))
        raise
    finally:
        page.close()


def run_cell(page, index: int) -> None:
    """Run a cell as a user does: click its prompt, Shift+Enter."""
    page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-InputPrompt").click()
    page.keyboard.press("Shift+Enter")


def save_first_two(page, name: str, which: tuple[int, int] = (0, 1)) -> None:
    """In the cohort builder: select the first two series of the gallery (or
    those at the places ``which``) and save them as cohort ``name`` of
    oncology (version 1)."""
    cards = page.locator(".ih-cohort .ih-card")
    cards.nth(which[0]).click()
    cards.nth(which[1]).click()
    page.wait_for_function("document.querySelector('.ih-cohort .ih-selinfo').textContent"
                           " === '2 selected'", timeout=10_000)
    page.fill(".ih-cohort .ih-name", name)
    page.click(".ih-cohort .ih-save")
    page.wait_for_selector(f".ih-cohort .ih-message:has-text('saved oncology/{name}@1')",
                           timeout=30_000)


def demo_password(stack, user: str) -> str:
    """The password ``up --demo`` made for alice or bob."""
    return json.loads((stack.home.secrets_dir / "demo_logins.json").read_text())[user]


def only_the_hub(stack, urls: list[str]) -> list[str]:
    """The requests of ``urls`` that went anywhere but the hub (none should)."""
    return [u for u in urls if not u.startswith(stack.url + "/")
            and not u.startswith(("data:", "blob:"))]


@contextlib.contextmanager
def viewer_page(stack, browser, user: str, password: str, name: str):
    """A browser of its own logged in to the hub as ``user`` and sent on to the
    OHIF viewer's study list (the hub's OAuth in between); yields the page,
    whose every request's URL is in ``page.requests`` and every console
    error in ``page.errors``."""
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.requests, page.errors = requests, errors
    try:
        page.goto(f"{stack.url}/hub/login?next=/services/viewer/")
        page.fill("#username_input", user)
        page.fill("#password_input", password)
        page.click("#login_submit")
        page.wait_for_selector("text=Study List", timeout=120_000)
        yield page
    except Exception:
        page.screenshot(path=str(ARTIFACTS / f"{name}-failure.png"))
        (ARTIFACTS / f"{name}-console.txt").write_text("\n".join(errors))
        raise
    finally:
        page.close()


def skip_tour(page) -> None:
    """OHIF's first-visit tour of the viewer, dismissed as a user would."""
    page.wait_for_selector("text=Skip all", timeout=120_000)
    page.click("text=Skip all")


def picture(png: bytes):
    """A screenshot as an RGB array (rows, columns, 3)."""
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
