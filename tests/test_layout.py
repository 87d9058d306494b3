"""The package's shape (ARCHITECTURE.md): module size, no import cycle, imports that point down the layers, no private
name across modules, scripts that import no script, tests that mirror the packages, and shipped chat templates that
resolve by name from a regular (non-editable) install."""

from __future__ import annotations

import ast
import graphlib
import json
import shutil
import site
import subprocess
import sys
from pathlib import Path

from conftest import REPO

from chatalign.data.tokenizers import load_tokenizer

PACKAGE = REPO / "src" / "chatalign"
MAX_LINES = 450
# Imports only point down (or sideways within a layer): scripts -> eval/analysis/synth -> train/generation/judges ->
# data/store/configs. launch.py is a top-level tool.
LAYERS = {"store": 0, "configs": 0, "data": 0, "train": 1, "generation": 1, "judges": 1, "synth": 2, "eval": 2,
          "analysis": 2, "launch": 2}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(path: Path, name: str) -> list[tuple[str, list[str]]]:
    """(imported module, names) for every import in a module, lazy ones included, relative ones resolved."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.append((base, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((alias.name, []) for alias in node.names)
    return out


def chatalign_edges() -> dict[str, set[str]]:
    """Module -> the chatalign modules it imports (a name imported from a package counts as its submodule if one)."""
    mods = modules()
    edges = {}
    for name, path in mods.items():
        targets = set()
        for base, names in imports_of(path, name):
            for target in [base, *(f"{base}.{n}" for n in names)]:
                if target in mods and target != name:
                    targets.add(target)
        # A package's __init__ and its own modules are one unit, not a cycle.
        edges[name] = {t for t in targets if not t.startswith(name + ".") and not name.startswith(t + ".")}
    return edges


def test_no_module_over_the_size_limit():
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
    assert len(sizes) > 40  # the walk found the package


def test_no_import_cycle():
    graphlib.TopologicalSorter(chatalign_edges()).prepare()  # raises CycleError naming the cycle


def test_imports_point_down_the_layers():
    upward = []
    for source, targets in chatalign_edges().items():
        for target in targets:
            a, b = source.split(".")[1], target.split(".")[1]
            if a != b and LAYERS[b] > LAYERS[a]:
                upward.append(f"{source} -> {target}")
    assert upward == []
    for leaf in ("chatalign.store", "chatalign.configs"):
        assert chatalign_edges()[leaf] == set(), f"{leaf} must import nothing from chatalign"
    assert set(LAYERS) == {name.split(".")[1] for name in modules() if name != "chatalign"}


def test_no_private_name_crosses_a_module():
    mods = modules()
    private = [f"{name} imports {base}.{n}" for name, path in mods.items() for base, names in imports_of(path, name)
               if base in mods and base != name for n in names if n.startswith("_") and not n.startswith("__")]
    assert private == []


def test_no_script_imports_another():
    scripts = {p.stem for p in (REPO / "scripts").glob("*.py")}
    crossing = [f"{p.name} imports {base}" for p in (REPO / "scripts").glob("*.py")
                for base, _ in imports_of(p, p.stem) if base.split(".")[0] in scripts | {"scripts"}]
    assert crossing == [] and len(scripts) >= 10


def test_tests_mirror_the_packages():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    # helpers/ and golden/ hold shared code and data; reliability/ is the malformed-input corpus across every layer.
    test_dirs = {p.name for p in (REPO / "tests").iterdir() if p.is_dir()
                 and p.name not in ("helpers", "golden", "reliability") and not p.name.startswith((".", "__"))}
    assert test_dirs <= packages
    built = {p for p in packages if len(list((PACKAGE / p).glob("*.py"))) > 1}  # eval/, analysis/: not built yet
    assert built - test_dirs == set()
    for folder in test_dirs:
        names = {p.stem for p in (PACKAGE / folder).glob("*.py")} | {p.name for p in (PACKAGE / folder).iterdir()
                                                                     if (p / "__init__.py").is_file()}
        strays = [p.name for p in (REPO / "tests" / folder).glob("test_*.py") if p.stem[len("test_"):] not in names]
        assert strays == [], f"tests/{folder}/ holds tests named after no module of chatalign.{folder}"


def test_regular_install_resolves_shipped_templates_by_name(tmp_path, tiny_tokenizer_dir):
    """`pip install .` (not -e) in a fresh venv, then a shipped template by name, rendered by a tokenizer, and the
    shipped MT-Bench and Arena-Hard data."""
    source = tmp_path / "checkout"
    source.mkdir()
    for name in ("setup.py", "README.md", "MANIFEST.in"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "chat_templates", source / "chat_templates")
    for shipped in ("mt_bench", "arena_hard"):
        shutil.copytree(REPO / "data" / shipped, source / "data" / shipped)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The venv sees this interpreter's packages (pip, setuptools, transformers) as plain paths after its own, so no
    # .pth of theirs runs and an editable chatalign cannot shadow the installed one.
    venv_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                    capture_output=True, text=True, check=True).stdout.strip())
    (venv_site / "outer_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--no-index", str(source)], capture_output=True, text=True, cwd=tmp_path)
    assert install.returncode == 0, install.stderr[-3000:]
    shutil.rmtree(source)  # nothing may be read from the checkout any more
    probe = (
        "import json, chatalign\n"
        "from chatalign.data.templates import TEMPLATE_DIR, list_templates\n"
        "from chatalign.data.tokenizers import load_tokenizer\n"
        f"tok = load_tokenizer({str(tiny_tokenizer_dir)!r}, chat_template='zephyr')\n"
        "text = tok.apply_chat_template([{'role': 'user', 'content': 'Hi'}], tokenize=False, add_generation_prompt=True)\n"
        "from chatalign.eval.mt_bench import MT_BENCH_DIR, load_questions\n"
        "from chatalign.eval import arena_hard\n"
        "print(json.dumps({'package': chatalign.__file__, 'templates': str(TEMPLATE_DIR), 'names': list_templates(),\n"
        "                  'text': text, 'mt_bench': str(MT_BENCH_DIR), 'questions': len(load_questions()),\n"
        "                  'arena_hard': str(arena_hard.DATA_DIR), 'v2': len(arena_hard.load_questions('arena-hard-v2.0'))}))\n"
    )
    run = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["package"].startswith(str(venv)) and result["templates"].startswith(str(venv))
    assert result["names"] == sorted(p.stem for p in (REPO / "chat_templates").glob("*.jinja"))
    assert result["mt_bench"].startswith(str(venv)) and result["questions"] == 80  # the shipped MT-Bench data too
    assert result["arena_hard"].startswith(str(venv)) and result["v2"] == 750  # and Arena-Hard's
    checkout = load_tokenizer(str(tiny_tokenizer_dir), chat_template="zephyr")
    expected = checkout.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                            add_generation_prompt=True)
    assert result["text"] == expected and expected.startswith("<|user|>\nHi")
