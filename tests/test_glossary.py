"""book/glossary.md: every vizlib name it mentions exists, every chapter it links is a file of book/."""
import importlib
import re
from pathlib import Path

BOOK = Path(__file__).resolve().parents[1] / "book"
GLOSSARY = (BOOK / "glossary.md").read_text(encoding="utf-8")
ROWS = [line for line in GLOSSARY.splitlines()
        if line.startswith("| ") and not line.startswith("| 中文")]


def resolve(dotted: str):
    """The object a dotted name ``module.attribute`` of vizlib names (with or without the leading
    ``vizlib.``); ImportError or AttributeError if there is none."""
    module_name, _, attribute = dotted.removeprefix("vizlib.").rpartition(".")
    return getattr(importlib.import_module(f"vizlib.{module_name}"), attribute)


def test_every_vizlib_name_exists():
    names = re.findall(r"``([\w.]+)``", GLOSSARY)
    assert len(names) >= 40
    missing = []
    for name in set(names):
        try:
            resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert not missing, f"names in glossary.md that vizlib lacks: {sorted(missing)}"


def test_every_chapter_link_is_a_file_of_the_book():
    targets = re.findall(r"\{doc\}`([^`]+)`", GLOSSARY)
    assert targets
    missing = {t for t in targets if not any((BOOK / f"{t}{suffix}").is_file() for suffix in (".ipynb", ".md"))}
    assert not missing, f"{{doc}} targets with no file in book/: {sorted(missing)}"


def test_every_row_gives_a_chinese_term_an_english_term_a_chapter_and_an_implementation():
    assert len(ROWS) >= 40
    chinese = []
    for row in ROWS:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 4 and all(cells), row
        assert re.search(r"[\u3000-\u9fff]", cells[0]) or cells[0].isascii(), row
        assert "{doc}`" in cells[2], row
        chinese.append(cells[0])
    assert len(chinese) == len(set(chinese)), "a term is listed twice"
    assert sum(bool(re.search(r"[\u4e00-\u9fff]", term)) for term in chinese) >= 40
