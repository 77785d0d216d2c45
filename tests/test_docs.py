"""The documentation stays true (issue 33): the generated reference pages match the code, every config key and CLI
command is in them exactly once, the site builds with `mkdocs build --strict`, the README stays short, and the
version `prefsynth --version` prints is the one CHANGELOG.md names last and pyproject.toml declares."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from flows.cli import docs_gen
from flows.cli.args import build_parser
from pipeline.config import describe_keys
from tests.conftest import cli_in_process

ROOT = Path(__file__).resolve().parents[1]


def _sections(text: str, level: str = "## ") -> dict[str, str]:
    parts = re.split(rf"(?m)^(?={level})", text)
    return {p.splitlines()[0][len(level):].strip(): p for p in parts[1:]}


def test_the_committed_reference_pages_are_what_the_code_generates():
    for path, text in docs_gen.pages().items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is stale; fix: python -m flows.cli.docs_gen"


def test_docs_gen_check_names_a_stale_page(tmp_path, monkeypatch, capsys):
    page = tmp_path / "config.md"
    page.write_text("old\n")
    monkeypatch.setattr(docs_gen, "pages", lambda: {page: "new\n"})
    monkeypatch.setattr(docs_gen, "ROOT", tmp_path)
    assert docs_gen.main(["--check"]) == 1 and page.read_text() == "old\n"
    assert "stale: config.md" in capsys.readouterr().err
    assert docs_gen.main([]) == 0 and page.read_text() == "new\n"


def test_every_config_key_is_documented_exactly_once_under_its_model():
    sections = _sections((ROOT / "docs" / "reference" / "config.md").read_text())
    assert list(sections) == [title for title, _, _ in docs_gen.CONFIG_MODELS]
    for title, model, _ in docs_gen.CONFIG_MODELS:
        # the keys `--help` lists, read from describe_keys' own lines
        keys = [line.split(" (default ")[0].strip() for line in describe_keys(model)]
        assert len(keys) > 20
        bullets = re.findall(r"(?m)^- `([^`]+)` \(default ", sections[title])
        assert sorted(bullets) == sorted(keys), title  # no key missing, none twice, none invented


def test_every_command_and_option_is_in_the_command_reference():
    page = (ROOT / "docs" / "reference" / "cli.md").read_text()
    sections = _sections(page)
    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    assert sorted(sections) == sorted(f"prefsynth {name}" for name in sub.choices)
    for name, parser in sub.choices.items():
        body = sections[f"prefsynth {name}"]
        for action in parser._actions:
            for opt in action.option_strings:
                if opt not in ("-h", "--help"):
                    assert f"`{opt}" in body or f", {opt}" in body, f"{name} {opt}"
        assert page.count(f"\n## prefsynth {name}\n") == 1
    assert "prefsynth --version" in page


def test_the_config_reference_keeps_angle_brackets_visible():
    text = (ROOT / "docs" / "reference" / "config.md").read_text()
    assert "'&lt;id&gt;-t&lt;k&gt;'" in text and "'<id>-t<k>'" not in text


def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def test_the_site_builds_strictly(tmp_path):
    proc = _mkdocs(ROOT / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = {p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("index.html")}
    for page in ("tutorial/index.html", "judges/index.html", "reference/config/index.html",
                 "reference/cli/index.html", "architecture/index.html"):
        assert page in built


def test_a_broken_link_fails_the_strict_build(tmp_path):
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    page = tmp_path / "docs" / "judges.md"
    page.write_text(page.read_text() + "\nSee [the lost page](no-such-page.md).\n")
    proc = _mkdocs(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode != 0 and "no-such-page.md" in proc.stderr


def test_the_readme_is_short_and_keeps_the_two_command_quick_start():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 15 * 1024
    quick = readme.split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.splitlines()]
    assert commands == ["make run", "make test"]


def test_the_readme_links_resolve():
    readme = (ROOT / "README.md").read_text()
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", readme) if "://" not in t]
    assert targets, "the README links no page"
    missing = [t for t in targets if t and not (ROOT / t).exists()]
    assert not missing


def _versions_in_changelog() -> list[str]:
    return re.findall(r"(?m)^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text())


def test_version_is_the_changelogs_newest_and_the_cli_prints_it():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    named = _versions_in_changelog()
    assert named[0] == declared, "CHANGELOG.md's newest version is not pyproject.toml's"
    assert max(named, key=lambda v: tuple(map(int, v.split(".")))) == declared
    assert named == sorted(named, key=lambda v: tuple(map(int, v.split("."))), reverse=True)
    proc = cli_in_process("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"prefsynth {declared}"


def test_the_version_comes_from_pyproject_in_a_source_tree(tmp_path, monkeypatch):
    import pipeline

    tree = tmp_path / "src"
    (tree / "pipeline").mkdir(parents=True)
    (tree / "pyproject.toml").write_text('[project]\nname = "prefsynth"\nversion = "9.8.7"\n')
    monkeypatch.setattr(pipeline, "__file__", str(tree / "pipeline" / "__init__.py"))
    assert pipeline._version() == "9.8.7"
    (tree / "pyproject.toml").write_text('[project]\nname = "other"\nversion = "1.0.0"\n')
    from importlib.metadata import version

    assert pipeline._version() == version("prefsynth")  # another project's file: the installed metadata


def test_contributing_covers_what_the_issue_asks():
    text = (ROOT / "CONTRIBUTING.md").read_text()
    for heading in ("## Developer set-up", "## Tiers and markers", "## Adding a stage", "## Adding a judge template",
                    "## Documentation"):
        assert heading in text, heading
