"""Same as ``keras-roadmap search`` (kept for old command lines); see export/README.md.

python export/search.py --model model.onnx --index photos.faiss --ids photos.json query.jpg --k 5
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from keras_roadmap.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["search", *sys.argv[1:]]))
