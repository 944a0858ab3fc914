"""Count words, letters or vowels of the prepared input; write the count to TMP_DIR."""
import argparse
import os
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--what", choices=["words", "letters", "vowels"], required=True)
args, _unknown = parser.parse_known_args()

text = (Path(os.environ["TMP_DIR"]) / "input.txt").read_text()
count = {
    "words": len(text.split()),
    "letters": sum(c.isalpha() for c in text),
    "vowels": sum(c in "aeiouAEIOU" for c in text),
}[args.what]
(Path(os.environ["TMP_DIR"]) / f"{args.what}.count").write_text(str(count))
print(f"{args.what}: {count}")
