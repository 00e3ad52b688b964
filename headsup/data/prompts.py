"""Per-image text prompts: where each image's prompt comes from.

OSEDiff conditions the generator, the fake score and the teacher's positive branch on a prompt
per image (tags of the image from a tagger). A dataset's `PromptSource` says where they are:

- `FixedPrompt`: one text for every image of the set;
- `PromptFiles`: `<stem>.txt` beside each image (what `headsup-tools prepare prompts` writes);
- `PromptMap`: a JSON Lines file of {"path": ..., "prompt": ...} (paths relative to the file);
- `ManifestPrompts`: the "prompt" field of each manifest record.

Every image's prompt is read when the dataset is built, so a missing one is reported at once,
naming the image. Text is stripped of surrounding white space.
"""

from __future__ import annotations

import json
from pathlib import Path


class PromptSource:
    """The prompt of an image given its record {"path": Path, ...}."""

    def __call__(self, record: dict) -> str:
        raise NotImplementedError


class FixedPrompt(PromptSource):
    def __init__(self, text: str) -> None:
        self.text = text.strip()

    def __call__(self, record: dict) -> str:
        return self.text


class PromptFiles(PromptSource):
    """`<stem><suffix>` beside the image (`photos/a.png` -> `photos/a.txt`)."""

    def __init__(self, suffix: str = ".txt") -> None:
        self.suffix = suffix

    def __call__(self, record: dict) -> str:
        path = Path(record["path"]).with_suffix(self.suffix)
        if not path.is_file():
            raise FileNotFoundError(f"no prompt file {path} for {record['path']} (prompts: txt; "
                                    "`headsup-tools prepare prompts` writes them)")
        return path.read_text(encoding="utf-8").strip()


class PromptMap(PromptSource):
    """Prompts from a JSON Lines file of {"path": ..., "prompt": ...}, paths relative to the file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"prompt map not found: {self.path}")
        self.prompts: dict[Path, str] = {}
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                image, text = Path(entry["path"]), str(entry["prompt"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{self.path}, line {number}: not a {{\"path\", \"prompt\"}} record ({err})") from err
            self.prompts[_key(image if image.is_absolute() else self.path.parent / image)] = text.strip()

    def __call__(self, record: dict) -> str:
        try:
            return self.prompts[_key(Path(record["path"]))]
        except KeyError:
            raise KeyError(f"{self.path} has no prompt for {record['path']}") from None


class ManifestPrompts(PromptSource):
    def __call__(self, record: dict) -> str:
        if "prompt" not in record:
            raise KeyError(f"manifest record of {record['path']} has no 'prompt' field (prompts: manifest)")
        return str(record["prompt"]).strip()


def _key(path: Path) -> Path:
    return path.expanduser().resolve()


def prompt_source(prompts: str | None, prompt: str | None, where: str = "dataset") -> PromptSource | None:
    """The source a set's `prompts` ("txt", "manifest" or a .jsonl path) or fixed `prompt` names; None
    when it gives neither (its images then take the model's own fixed prompt)."""
    if prompts is not None and prompt is not None:
        raise ValueError(f"{where}: give 'prompts' (per image) or 'prompt' (one for all), not both")
    if prompt is not None:
        return FixedPrompt(prompt)
    if prompts is None:
        return None
    if prompts == "txt":
        return PromptFiles()
    if prompts == "manifest":
        return ManifestPrompts()
    if prompts.endswith(".jsonl"):
        return PromptMap(prompts)
    raise ValueError(f"{where}: prompts must be 'txt', 'manifest' or a .jsonl file, got '{prompts}'")
