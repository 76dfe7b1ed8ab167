"""Convert word vectors to flair-riva's safe format (``.safetensors`` + JSON word list).

``python -m flair_riva.convert_vectors [--trust-pickle] SOURCE TARGET.safetensors``

SOURCE is any file :func:`flair_riva.text.load_word_vectors` reads. A pickled gensim file
(``.kv``/``.model``) runs code when loaded: convert it only if you made it yourself or trust who did,
and pass ``--trust-pickle`` to say so. The result loads without running code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flair_riva.convert_vectors", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="GloVe/word2vec text or binary, or (with --trust-pickle) a gensim .kv/.model")
    p.add_argument("target", help="output file, ending in .safetensors")
    p.add_argument("--trust-pickle", action="store_true",
                   help="UNSAFE: allow unpickling a gensim .kv/.model SOURCE (runs any code it holds)")
    args = p.parse_args(argv)
    from flair_riva.text import convert_word_vectors

    try:
        out = convert_word_vectors(args.source, args.target, trust_pickle=args.trust_pickle)
    except (OSError, ValueError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
