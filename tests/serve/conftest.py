"""The headless browser the page tests share (one per module)."""

from __future__ import annotations

import os

import pytest
from browser import CHROMIUM, Browser


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no headless browser: {CHROMIUM} is missing (Debian: apt-get install chromium)")
    b = Browser()
    try:
        yield b
    finally:
        b.close()
