"""One-off repair of the bundled TinyStories sample's mis-decoded characters (mojibake), kept to record how.

86 of the 900 training stories, as taken from the hub, had their UTF-8 punctuation decoded as Windows-1252:
`“` had become `â€œ`, `’` `â€™`, `–` `â€“`, `—` `â€”`, and `”` (bytes e2 80 9d) `â€` alone, because
Windows-1252 has no character for the byte 9d, so it was dropped. This script puts the lost byte back
(`â€` followed by ASCII or the end of a story), then lets ftfy (https://github.com/rspeer/python-ftfy) undo the
mis-decoding. ftfy's default settings also straighten curly quotes and apostrophes, which makes the 86 stories
match the other 814, written with plain `"` and `'`. Only those 86 stories change; validation.jsonl had none.

    pip install ftfy==6.3.1          # the version used (not needed to train: the repaired files are committed)
    python data/samples/tinystories/repair_text.py            # rewrite train.jsonl / validation.jsonl in place
    python data/samples/tinystories/repair_text.py --check    # exit 1 if a file would change

Running it again changes nothing: the repaired text has nothing left to repair.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))  # the project root, for machinery.fileio's atomic write

from machinery.fileio import write_text  # noqa: E402

FILES = ("train.jsonl", "validation.jsonl")
LOST_9D = re.compile("â€(?=[\x00-\x7f]|$)")  # `”` whose third byte (9d) was dropped


def repair(text: str) -> str:
    import ftfy
    return ftfy.fix_text(LOST_9D.sub("â€\x9d", text))


def repaired_lines(path: Path) -> tuple[list[str], int]:
    """The file's lines with every story repaired, and how many stories changed."""
    lines, changed = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        story = json.loads(line)
        fixed = repair(story["text"])
        changed += fixed != story["text"]
        lines.append(json.dumps({**story, "text": fixed}, ensure_ascii=False))  # the files' own format
    return lines, changed


def main(argv: list[str]) -> int:
    check = "--check" in argv
    changed_any = False
    for name in FILES:
        lines, changed = repaired_lines(HERE / name)
        print(f"{name}: {changed} stories {'would change' if check else 'repaired'}")
        changed_any |= changed > 0
        if changed and not check:
            write_text(HERE / name, "\n".join(lines) + "\n")
    return 1 if check and changed_any else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
