from pathlib import Path

from tools.schema import markdown_table

ROOT = Path(__file__).resolve().parents[1]


def test_readme_schema_table_matches_the_schema() -> None:
    assert markdown_table() in (ROOT / "README.md").read_text()


def test_readme_starts_with_the_two_setup_commands() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = text.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block
