import hashlib
import os
import tarfile
import time

from tilestack.workflow.archive import manifest_csv, sha256_file, write_archive


def test_archive_bytes_do_not_depend_on_file_times_or_insertion_order(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("first\n")
    members = {"run/b.bin": b"\x00\x01", "run/a.txt": a}
    write_archive(tmp_path / "one.tar.gz", members, 946684800)
    os.utime(a, (time.time() + 1000, time.time() + 1000))  # the source file is touched
    write_archive(tmp_path / "two.tar.gz", dict(reversed(members.items())), 946684800)
    one, two = ((tmp_path / n).read_bytes() for n in ("one.tar.gz", "two.tar.gz"))
    assert one == two
    with tarfile.open(tmp_path / "one.tar.gz") as tar:
        infos = tar.getmembers()
        assert [i.name for i in infos] == ["run/a.txt", "run/b.bin"]  # sorted
        assert {(i.mtime, i.uid, i.gid, i.uname) for i in infos} == {(946684800, 0, 0, "")}
        assert tar.extractfile("run/a.txt").read() == b"first\n"
    assert not list(tmp_path.glob("*.part"))  # no temporary left behind


def test_manifest_lists_checksums(tmp_path):
    f = tmp_path / "x.fits"
    f.write_bytes(b"abc")
    digest = sha256_file(f)
    assert digest == hashlib.sha256(b"abc").hexdigest()
    text = manifest_csv([{"role": "input", "path": "lights/x.fits", "bytes": 3, "sha256": digest}])
    lines = text.strip().splitlines()
    assert lines[0].split(",")[:2] == ["role", "path"] and digest in lines[1]
