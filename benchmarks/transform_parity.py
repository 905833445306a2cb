"""Print the transform presets' parity with torchvision (the numbers in the README).

Runs the comparisons of tests/test_transforms_parity.py (same photos, same crop boxes) and
prints, per preset, the worst photo's mean and max |ours - torchvision| in normalised units.
Needs torch + torchvision. Usage: python benchmarks/transform_parity.py
"""

import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
spec = importlib.util.spec_from_file_location("parity", ROOT / "tests" / "test_transforms_parity.py")
parity = importlib.util.module_from_spec(spec)
spec.loader.exec_module(parity)

print(f"{len(parity.PHOTOS)} photos: {', '.join(parity.PHOTOS)}")
print("| preset | test mean abs diff | test max | train mean (same box + flip) | train max |")
print("|---|---:|---:|---:|---:|")
for name in sorted(parity.PRESETS):
    test = parity.eval_differences(name).values()
    train = parity.train_differences(name).values()
    print(
        f"| `{name}` | {max(d.mean() for d in test):.4f} | {max(d.max() for d in test):.4f} "
        f"| {max(d.mean() for d in train):.4f} | {max(d.max() for d in train):.4f} |"
    )
