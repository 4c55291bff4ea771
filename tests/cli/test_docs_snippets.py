"""Every ```toml block in docs/*.md is a complete, valid config.

The quickstart, the recipes and the configuration reference show configs that users copy;
this keeps them parseable by the same validation the server runs at startup, and free of the
startup warnings that would make a copied config look broken. A block that is deliberately not
a complete config can be marked with `<!-- toml: fragment -->` on the line before it.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from quota_server.config import parse_config

DOCS = Path(__file__).resolve().parents[2] / "docs"
FRAGMENT_MARK = "<!-- toml: fragment -->"
_BLOCK = re.compile(r"^```toml[ \t]*\n(.*?)^```", re.M | re.S)


def toml_blocks() -> list[tuple[str, str]]:
    """(id, text) of every toml block, id = file:line."""
    blocks = []
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text()
        for match in _BLOCK.finditer(text):
            before = text[: match.start()].rstrip().rsplit("\n", 1)[-1]
            if before.strip() == FRAGMENT_MARK:
                continue
            line = text.count("\n", 0, match.start()) + 1
            blocks.append((f"{path.name}:{line}", match.group(1)))
    return blocks


BLOCKS = toml_blocks()


def test_the_docs_have_configs():
    """Guards the extraction itself: the pages that must show configs do."""
    names = {block_id.split(":")[0] for block_id, _ in BLOCKS}
    assert {"quickstart.md", "recipes.md", "configuration.md"} <= names
    assert sum(1 for block_id, _ in BLOCKS if block_id.startswith("recipes.md")) == 5


@pytest.mark.parametrize("block_id, text", BLOCKS, ids=[block_id for block_id, _ in BLOCKS])
def test_toml_block_is_a_valid_config(block_id, text):
    config = parse_config(tomllib.loads(text), source=block_id)
    assert config.warnings == ()
