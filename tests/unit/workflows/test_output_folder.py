"""A run folder that cannot take the outputs is refused before training, naming the cause."""

import contextlib
import subprocess

import pytest

from thyroid_monai.workflows import OutputFolderError, check_output_folder, run_bundle


@contextlib.contextmanager
def tmpfs(path, options):
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                             capture_output=True, check=False)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_read_only_folder_is_refused(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as folder:
        with pytest.raises(OutputFolderError, match=r"ro is not writable: Read-only file system"):
            check_output_folder(folder)
        # The bundle never starts: the same error comes before any data is read.
        with pytest.raises(OutputFolderError, match="not writable"):
            run_bundle(["train.yaml"], run_dir=folder, dataset_dir=tmp_path / "missing")


def test_full_folder_is_refused(tmp_path):
    with tmpfs(tmp_path / "small", "size=1m") as folder:
        with pytest.raises(
            OutputFolderError, match=r"has 1\.0 MB free; a run needs at least 200 MB"
        ):
            check_output_folder(folder)
        assert check_output_folder(folder, min_free_mb=0.5) == folder
        assert list(folder.iterdir()) == []  # the probe left nothing behind


def test_a_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(OutputFolderError, match="exists and is not a folder"):
        check_output_folder(tmp_path / "run")
    assert check_output_folder(tmp_path / "new" / "run").is_dir()
