"""The browser for the widget tests (see tests/browser_support.py)."""

import pytest
from browser_support import launch


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()
