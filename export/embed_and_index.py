"""Same as ``keras-roadmap index`` (kept for old command lines); see export/README.md.

python export/embed_and_index.py --model model.onnx --images photos/ --index photos.faiss --ids photos.json
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from keras_roadmap.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["index", *sys.argv[1:]]))
