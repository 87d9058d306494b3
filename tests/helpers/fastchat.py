"""FastChat's own show_result.py (fschat 0.2.36, installed without its dependencies), run on a judgment file."""

import re
import subprocess
import sys
from pathlib import Path


def fastchat_show_result(path: Path, mode: str = "single", baseline: str | None = None) -> dict:
    """FastChat's own show_result.py on a file: {section: {model: score}} (single) or {model: row} (pairwise)."""
    command = [sys.executable, "-m", "fastchat.llm_judge.show_result", "--input-file", str(path), "--mode", mode]
    if baseline:
        command += ["--baseline-model", baseline]
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=path.parent).stdout
    if mode != "single":
        lines = out.splitlines()
        header = next(i for i, line in enumerate(lines) if line.strip().startswith("win"))
        columns = lines[header].split()
        return {parts[0]: dict(zip(columns, map(float, parts[1:]), strict=True))
                for parts in (line.split() for line in lines[header + 2:] if line.strip())}
    sections, current = {}, None
    for line in out.splitlines():
        title = re.match(r"#+ (.+?) #+", line)
        if title:
            current = sections.setdefault(title.group(1), {})
        elif current is not None and re.match(r"\S+\s+(\d\s+)?-?\d+\.\d+$", line.strip()):
            parts = line.split()
            current[parts[0]] = float(parts[-1])
    return sections
