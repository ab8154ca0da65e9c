"""The Agent Skills shipped with tunelab (skills/ at the repository root, packaged as tunelab/skills) and
their installation where an assistant looks for them."""

from __future__ import annotations

import shutil
from pathlib import Path

from tunelab.errors import TunelabError

SKILL_FILE = "SKILL.md"


def skills_source() -> Path:
    """tunelab/skills in an installed package (a link to the repository's skills/ in a checkout)."""
    here = Path(__file__).resolve().parents[1] / "skills"
    if here.is_dir():
        return here
    checkout = Path(__file__).resolve().parents[3] / "skills"
    if checkout.is_dir():
        return checkout
    raise TunelabError("the skills are missing from this installation", file=here)


def skill_dirs() -> list[Path]:
    return sorted(p.parent for p in skills_source().glob(f"*/{SKILL_FILE}"))


def install_skills(target: Path, force: bool = False) -> list[Path]:
    """Copy each skill folder into target; an existing one is kept unless force (it may have been edited)."""
    sources = skill_dirs()
    existing = [target / s.name for s in sources if (target / s.name).exists()]
    if existing and not force:
        raise TunelabError(f"already installed: {', '.join(p.name for p in existing)}; pass --force to replace",
                           file=target, field="--dir")
    target.mkdir(parents=True, exist_ok=True)
    out = []
    for src in sources:
        dest = target / src.name
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(src, dest)
        out.append(dest / SKILL_FILE)
    return out
