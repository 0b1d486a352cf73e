"""python -m diffusion.provenance verify IMAGE... (see diffusion/provenance/verify.py)"""
import sys

from diffusion.provenance.verify import main

USAGE = "usage: python -m diffusion.provenance verify IMAGE... [--model FOLDER_OR_ID] [--trust-anchors CA.pem]"

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    if sys.argv[1] != "verify":
        print(f"error: unknown command {sys.argv[1]!r}; {USAGE}", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[2:]))
