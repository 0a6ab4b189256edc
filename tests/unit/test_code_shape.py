"""The shape the redesign set (issue 15), held: short functions, a bundle config that wires."""

import ast
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
LONGEST_FUNCTION = 80
TRAIN_YAML = REPO / "bundles" / "thyroid_us_multitask" / "configs" / "train.yaml"


def test_no_function_of_the_library_is_longer_than_80_lines():
    long = []
    for package in ("thyroid_monai", "data_prep"):
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > LONGEST_FUNCTION:
                        long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} {lines}")
    assert not long, long


def expressions(value):
    if isinstance(value, dict):
        return sum(expressions(v) for v in value.values())
    if isinstance(value, list):
        return sum(expressions(v) for v in value)
    return int(isinstance(value, str) and value.startswith("$"))


def test_the_training_config_wires_components_and_decides_nothing():
    text = TRAIN_YAML.read_text()
    config = yaml.safe_load(text)
    assert len(text.splitlines()) <= 250
    assert expressions({k: v for k, v in config.items() if k != "imports"}) <= 15


def test_every_method_overlay_holds_only_what_differs():
    for overlay in sorted((TRAIN_YAML.parent / "mtl").glob("*.yaml")):
        settings = yaml.safe_load(overlay.read_text())
        assert len(settings) <= 2, (overlay.name, settings)
        assert all(not isinstance(v, dict | list) for v in settings.values()), overlay.name
