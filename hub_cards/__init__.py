"""Model and dataset card templates, installed as ``milan_hf.hub_cards``.

Templates are Markdown with ``$field`` placeholders (``string.Template``: the braces of YAML
and BibTeX need no escaping). :func:`render_card` fills one in by name.
"""

from importlib import resources
from string import Template


def load_template(name: str) -> str:
    """The text of template ``name`` (e.g. ``"exemplars"`` for ``exemplars.md``)."""
    path = resources.files(__name__).joinpath(f"{name}.md")
    if not path.is_file():
        available = sorted(
            p.name[:-3] for p in resources.files(__name__).iterdir() if p.name.endswith(".md")
        )
        raise FileNotFoundError(f"no card template {name!r}; available: {available}")
    return path.read_text()


def render_card(name: str, **fields: object) -> str:
    """Template ``name`` with its ``$field`` placeholders filled; a missing field raises
    ``KeyError`` naming it."""
    return Template(load_template(name)).substitute({k: str(v) for k, v in fields.items()})
