"""The bundle format: manifest.json, per-artifact records and the golden probes.

A bundle directory looks like:

    manifest.json          this file's schema (MANIFEST_VERSION)
    labels.json            the class names, index = output position
    tfjs/model.json ...    artifact "tfjs_layers" (+ weight shards)
    tfjs_<q>/model.json    artifacts "tfjs_layers_float16", "tfjs_layers_uint8" (--tfjs-quantize)
    tfjs_graph/model.json  artifact "tfjs_graph" (optional)
    model.onnx             artifact "onnx"
    model_<precision>.tflite   artifacts "tflite_float32", "tflite_float16", "tflite_dynamic", "tflite_int8"
    probes/inputs.bin      golden probe inputs: raw little-endian float32, shape probes.input_shape
    probes/expected.bin    the Keras model's outputs for them: little-endian float32, probes.output_shape

Python, Node and the browser read exactly these bytes, so parity needs no TensorFlow.
A bundle is untrusted: Manifest.load validates the manifest (edgetl.bundlecheck's schema), and
check_integrity refuses, before any runtime opens anything, a file that is not a regular file
inside the bundle of its recorded size and sha256, or that a model reads without the manifest
listing it (TF.js shards, ONNX external data).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgetl.bundlecheck import (
    MANIFEST_VERSION,
    MAX_MANIFEST_BYTES,
    BundleError,
    check_side_files,
    inside,
    read_json,
    regular_file,
    validate_manifest,
)
from edgetl.contract import InputContract

__all__ = ["MANIFEST_VERSION", "BundleError", "inside"]  # re-exported: their old home

MANIFEST_FILE = "manifest.json"
PROBES_DIR = "probes"


def check_paths(bundle_dir: Path, manifest: Manifest) -> None:
    """Every path the manifest names (artifacts, their files, probes, source model) must stay
    inside the bundle; each artifact's main file must be one of its hashed files."""
    for a in manifest.artifacts:
        inside(bundle_dir, a.path, f"artifact {a.id}")
        for f in a.files:
            inside(bundle_dir, f.path, f"artifact {a.id}")
        if a.path not in {f.path for f in a.files}:
            raise BundleError(
                f"artifact {a.id}: its path {a.path!r} is not among its hashed files; refused"
            )
    for key in ("inputs", "expected"):
        inside(bundle_dir, manifest.probes.get(key), f"probes {key}")
    src = (manifest.source_model or {}).get("file")
    if src is not None:
        inside(bundle_dir, src, "source model")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks (bundle records, embedding cache keys)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass
class FileRecord:
    path: str  # relative to the bundle root, POSIX separators
    size: int
    sha256: str


@dataclass
class ArtifactRecord:
    id: str  # unique in the bundle: "tfjs_layers", "onnx", "tflite_int8", ...
    format: str  # "tfjs_layers" | "tfjs_graph" | "onnx" | "tflite"
    precision: str  # "float32" | "float16" | "dynamic" | "int8" | "uint8" (TF.js shards)
    path: str  # the main file (model.json, model.onnx, model_x.tflite), bundle-relative
    files: list[FileRecord] = field(default_factory=list)
    # Input/output tensor dtypes of the artifact itself (int8 TFLite may take uint8/int8).
    input_dtype: str = "float32"
    output_dtype: str = "float32"
    layout: str = "NHWC"
    options: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def sha256(self) -> str:
        main = [f for f in self.files if f.path == self.path]
        return main[0].sha256 if main else ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = self.size
        d["sha256"] = self.sha256
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ArtifactRecord:
        files = [FileRecord(**f) for f in d.get("files", [])]
        keys = set(cls.__dataclass_fields__) - {"files"}
        return cls(files=files, **{k: v for k, v in d.items() if k in keys})


@dataclass
class ProbeSet:
    names: list[str]  # "image:<file>" for real images, "synthetic:<seed>:<i>" otherwise
    inputs: np.ndarray  # (K, H, W, 3) float32, 0..255
    expected: np.ndarray  # (K, num_classes) float32, the Keras model's outputs
    labels: list[int | None] = field(default_factory=list)  # true class index when known


@dataclass
class Manifest:
    name: str
    labels: list[str]
    input: InputContract
    artifacts: list[ArtifactRecord]
    source_model: dict  # {"file": name, "sha256": hex}
    tools: dict  # package -> version
    probes: dict  # see write_probes
    output: dict = field(default_factory=dict)
    created: str = ""
    manifest_version: int = MANIFEST_VERSION

    def artifact(self, artifact_id: str) -> ArtifactRecord:
        for a in self.artifacts:
            if a.id == artifact_id:
                return a
        raise BundleError(
            f"no artifact {artifact_id!r} in bundle; it has: {', '.join(a.id for a in self.artifacts)}"
        )

    def to_dict(self) -> dict:
        return {
            "manifest_version": self.manifest_version,
            "name": self.name,
            "created": self.created,
            "labels": self.labels,
            "input": self.input.to_dict(),
            "output": self.output,
            "source_model": self.source_model,
            "tools": self.tools,
            "artifacts": [a.to_dict() for a in self.artifacts],
            "probes": self.probes,
        }

    def save(self, bundle_dir: Path) -> None:
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"
        (Path(bundle_dir) / MANIFEST_FILE).write_text(text, encoding="utf-8")

    @classmethod
    def load(cls, bundle_dir: Path) -> Manifest:
        """The bundle's manifest, validated against the schema and against itself
        (edgetl.bundlecheck.validate_manifest) and with every path it names inside the bundle;
        BundleError otherwise. Nothing but manifest.json is opened."""
        p = Path(bundle_dir) / MANIFEST_FILE
        if not p.exists() and not p.is_symlink():
            raise BundleError(f"{bundle_dir}: not a bundle (no {MANIFEST_FILE})")
        regular_file(inside(bundle_dir, MANIFEST_FILE, "manifest"), MANIFEST_FILE, "manifest")
        d = read_json(p, str(p), MAX_MANIFEST_BYTES)
        validate_manifest(d, str(p))
        try:
            manifest = cls(
                name=d["name"],
                labels=list(d["labels"]),
                input=InputContract.from_dict(d["input"]),
                artifacts=[ArtifactRecord.from_dict(a) for a in d["artifacts"]],
                source_model=d["source_model"],
                tools=d.get("tools", {}),
                probes=d["probes"],
                output=d.get("output", {}),
                created=d.get("created", ""),
                manifest_version=d["manifest_version"],
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BundleError(f"{p}: malformed manifest ({type(e).__name__}: {e})") from None
        check_paths(bundle_dir, manifest)
        return manifest


def record_files(bundle_dir: Path, rel_paths: list[str]) -> list[FileRecord]:
    root = Path(bundle_dir)
    return [FileRecord(p, (root / p).stat().st_size, sha256_file(root / p)) for p in rel_paths]


def folder_files(bundle_dir: Path, folder: str) -> list[FileRecord]:
    """Records of every file under bundle_dir/folder, sorted by bundle-relative path."""
    root = Path(bundle_dir)
    paths = sorted(
        p.relative_to(root).as_posix() for p in (root / folder).rglob("*") if p.is_file()
    )
    return record_files(root, paths)


def check_integrity(
    bundle_dir: Path, manifest: Manifest, artifact_ids: list[str] | None = None
) -> None:
    """Refuse, before any runtime opens anything, a bundle whose files differ from what the
    manifest recorded: every file of the chosen artifacts, the probes and the source model must
    be a regular file inside the bundle with its recorded size and sha256, and each artifact's
    files exactly those its model reads, of the sizes its weight specs imply
    (edgetl.bundlecheck.check_side_files)."""
    root = Path(bundle_dir)
    check_paths(root, manifest)
    problems: list[str] = []
    chosen = [a for a in manifest.artifacts if artifact_ids is None or a.id in artifact_ids]
    src = manifest.source_model
    named = [(f.path, f.size, f.sha256, a.id) for a in chosen for f in a.files]
    for key, shape in (("inputs", "input_shape"), ("expected", "output_shape")):
        size = 4 * int(np.prod(manifest.probes[shape]))
        named.append((manifest.probes[key], size, manifest.probes["sha256"][key], f"probes {key}"))
    named.append((src["file"], src["size"], src["sha256"], "source model"))
    # 1. regular files of the recorded sizes (stat only: nothing opened yet)
    sized = []
    for rel, size, sha, what in named:
        try:
            st = regular_file(inside(root, rel, what), rel, what)
        except BundleError as e:
            problems.append(str(e))
            continue
        if st.st_size != size:
            problems.append(f"{what}: {rel} is {st.st_size} bytes, the manifest says {size}")
        else:
            sized.append((rel, sha, what))
    if problems:
        raise BundleError("bundle integrity check failed: " + "\n  ".join(problems))
    # 2. each model reads exactly its listed files, of the sizes its weight specs imply
    for a in chosen:
        check_side_files(root, manifest, a)
    # 3. the bytes
    for rel, sha, what in sized:
        if sha256_file(root / rel) != sha:
            problems.append(f"{what}: {rel} does not match its sha256 in the manifest")
    if problems:
        raise BundleError("bundle integrity check failed: " + "\n  ".join(problems))


def write_probes(bundle_dir: Path, probes: ProbeSet) -> dict:
    """Write the probe tensors as raw little-endian float32; returns the manifest 'probes' entry."""
    root = Path(bundle_dir) / PROBES_DIR
    root.mkdir(parents=True, exist_ok=True)
    inputs = np.ascontiguousarray(probes.inputs, dtype="<f4")
    expected = np.ascontiguousarray(probes.expected, dtype="<f4")
    (root / "inputs.bin").write_bytes(inputs.tobytes())
    (root / "expected.bin").write_bytes(expected.tobytes())
    rel_in, rel_out = f"{PROBES_DIR}/inputs.bin", f"{PROBES_DIR}/expected.bin"
    return {
        "count": int(inputs.shape[0]),
        "names": list(probes.names),
        "true_labels": list(probes.labels) if probes.labels else [None] * int(inputs.shape[0]),
        "inputs": rel_in,
        "expected": rel_out,
        "input_shape": list(inputs.shape),
        "output_shape": list(expected.shape),
        "dtype": "float32",
        "byte_order": "little",
        "sha256": {
            "inputs": sha256_file(root / "inputs.bin"),
            "expected": sha256_file(root / "expected.bin"),
        },
    }


def read_probes(bundle_dir: Path, manifest: Manifest) -> ProbeSet:
    root = Path(bundle_dir)
    p = manifest.probes
    try:
        inputs = np.fromfile(inside(root, p["inputs"], "probes inputs"), dtype="<f4")
        inputs = inputs.reshape(p["input_shape"])
        expected = np.fromfile(inside(root, p["expected"], "probes expected"), dtype="<f4")
        expected = expected.reshape(p["output_shape"])
    except BundleError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BundleError(f"{bundle_dir}: unreadable golden probes ({e})") from None
    return ProbeSet(
        names=list(p["names"]),
        inputs=inputs.astype(np.float32),
        expected=expected.astype(np.float32),
        labels=list(p.get("true_labels", [])),
    )
