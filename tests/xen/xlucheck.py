"""Xen's own configuration parser, ``libxlutil.so.4.17``, called through ctypes.

Xen cannot run on the test machines, so ``xl create -n`` (a dry run) is impossible: it
needs the hypervisor. What does work is the library ``xl`` itself uses to read a domain
configuration file (Debian package ``xen-utils-4.17``):

* ``xlu_cfg_init`` / ``xlu_cfg_readfile`` / ``xlu_cfg_destroy``: the lexer and parser of the
  ``xl.cfg`` language (a syntax error makes ``readfile`` fail and report file:line);
* ``xlu_cfg_get_string`` / ``_long`` / ``_list`` / ``_listitem``: the values as ``xl`` reads them;
* ``xlu_disk_parse``: ``xl``'s parser of one disk specification (``file:/path,xvda1,w``),
  which fills a ``libxl_device_disk``; we read back its target path, vdev and access mode.

It does not check meaning beyond that (a vif with a bogus key is accepted: vifs are parsed
by the ``xl`` binary itself, so ``vif_entries`` splits them the way ``xl`` does).

    cfg = read_cfg(path)          # raises XenCfgError with Xen's message on a parse error
    cfg.string("name"), cfg.long("memory"), cfg.list("disk"), cfg.disks(), cfg.vifs()
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import tempfile

CANDIDATES = ("/usr/lib/x86_64-linux-gnu/libxlutil.so.4.17",
              "/usr/lib/xen-4.17/lib/libxlutil.so.4.17",
              "/usr/lib/x86_64-linux-gnu/libxlutil.so.4.17.0")


class XenCfgError(Exception):
    pass


def find_library() -> str | None:
    for path in CANDIDATES:
        if os.path.exists(path):
            return path
    found = sorted(glob.glob("/usr/lib*/**/libxlutil.so.4.17*", recursive=True))
    return found[0] if found else None


_lib = None
_xenlight = None
_libc = None


def _load():
    global _lib, _xenlight, _libc
    if _lib is not None:
        return _lib
    path = find_library()
    if path is None:
        raise OSError("libxlutil.so.4.17 not found (apt-get install xen-utils-4.17)")
    _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    _libc.fopen.restype = ctypes.c_void_p
    _libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    _libc.fclose.argtypes = [ctypes.c_void_p]
    _libc.fflush.argtypes = [ctypes.c_void_p]
    lib = ctypes.CDLL(path)
    lib.xlu_cfg_init.restype = ctypes.c_void_p
    lib.xlu_cfg_init.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.xlu_cfg_readfile.restype = ctypes.c_int
    lib.xlu_cfg_readfile.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.xlu_cfg_destroy.restype = None
    lib.xlu_cfg_destroy.argtypes = [ctypes.c_void_p]
    lib.xlu_cfg_get_string.restype = ctypes.c_int
    lib.xlu_cfg_get_string.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p),
                                       ctypes.c_int]
    lib.xlu_cfg_get_long.restype = ctypes.c_int
    lib.xlu_cfg_get_long.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_long),
                                     ctypes.c_int]
    lib.xlu_cfg_get_list.restype = ctypes.c_int
    lib.xlu_cfg_get_list.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p),
                                     ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    lib.xlu_cfg_get_listitem.restype = ctypes.c_char_p
    lib.xlu_cfg_get_listitem.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.xlu_disk_parse.restype = ctypes.c_int
    lib.xlu_disk_parse.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p),
                                   ctypes.c_void_p]
    xl_path = os.path.join(os.path.dirname(path), "libxenlight.so.4.17")
    if os.path.exists(xl_path):
        _xenlight = ctypes.CDLL(xl_path)
        _xenlight.libxl_device_disk_init.argtypes = [ctypes.c_void_p]
        _xenlight.libxl_device_disk_init.restype = None
    _lib = lib
    return lib


def available() -> bool:
    try:
        _load()
        return True
    except OSError:
        return False


class _DeviceDisk(ctypes.Structure):
    """The head of ``libxl_device_disk`` (libxl_types.idl, Xen 4.17); padded generously."""

    _fields_ = [("backend_domid", ctypes.c_uint32),
                ("backend_domname", ctypes.c_char_p),
                ("pdev_path", ctypes.c_char_p),
                ("vdev", ctypes.c_char_p),
                ("backend", ctypes.c_int),
                ("format", ctypes.c_int),
                ("script", ctypes.c_char_p),
                ("removable", ctypes.c_int),
                ("readwrite", ctypes.c_int),
                ("is_cdrom", ctypes.c_int),
                ("_rest", ctypes.c_char * 4096)]


#: libxl_disk_format values (libxl_types.idl)
DISK_FORMATS = {0: "unknown", 1: "qcow", 2: "qcow2", 3: "vhd", 4: "raw", 5: "empty", 6: "qed"}


class XenCfg:
    def __init__(self, path: str, handle, lib, report, messages_path: str):
        self.path = path
        self._h = handle
        self._lib = lib
        self._report = report
        self._messages = messages_path

    def close(self) -> None:
        if self._h:
            self._lib.xlu_cfg_destroy(self._h)
            self._h = None
        if self._report:
            _libc.fclose(self._report)
            self._report = None
            try:
                os.unlink(self._messages)
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def string(self, key: str) -> str | None:
        out = ctypes.c_char_p()
        if self._lib.xlu_cfg_get_string(self._h, key.encode(), ctypes.byref(out), 1) != 0:
            return None
        return out.value.decode()

    def long(self, key: str) -> int | None:
        out = ctypes.c_long()
        if self._lib.xlu_cfg_get_long(self._h, key.encode(), ctypes.byref(out), 1) != 0:
            return None
        return out.value

    def list(self, key: str) -> list[str] | None:
        lst = ctypes.c_void_p()
        n = ctypes.c_int()
        if self._lib.xlu_cfg_get_list(self._h, key.encode(), ctypes.byref(lst), ctypes.byref(n), 1) != 0:
            return None
        return [self._lib.xlu_cfg_get_listitem(lst, i).decode() for i in range(n.value)]

    def disks(self) -> list[dict]:
        """Every ``disk`` entry through ``xlu_disk_parse``: target, vdev, format, readwrite."""
        out = []
        for spec in self.list("disk") or []:
            disk = _DeviceDisk()
            if _xenlight is not None:
                _xenlight.libxl_device_disk_init(ctypes.byref(disk))
            arr = (ctypes.c_char_p * 1)(spec.encode())
            rc = self._lib.xlu_disk_parse(self._h, 1, arr, ctypes.byref(disk))
            if rc != 0:
                raise XenCfgError(f"{self.path}: xlu_disk_parse rejected {spec!r} (rc {rc}): "
                                  f"{self.messages()}")
            out.append({"spec": spec,
                        "target": disk.pdev_path.decode() if disk.pdev_path else None,
                        "vdev": disk.vdev.decode() if disk.vdev else None,
                        "format": DISK_FORMATS.get(disk.format, str(disk.format)),
                        "readwrite": bool(disk.readwrite)})
        return out

    def vifs(self) -> list[dict]:
        """Every ``vif`` entry split like xl's parse_nic_config: comma-separated key=value."""
        out = []
        for spec in self.list("vif") or []:
            d = {}
            for part in spec.split(","):
                part = part.strip()
                if not part:
                    continue
                key, _, value = part.partition("=")
                d[key.strip()] = value.strip()
            out.append(d)
        return out

    def messages(self) -> str:
        """What Xen's parser reported so far (warnings, errors)."""
        if self._report:
            _libc.fflush(self._report)
        try:
            with open(self._messages, errors="replace") as f:
                return f.read().strip()
        except FileNotFoundError:
            return ""


def read_cfg(path: str) -> XenCfg:
    """Parse ``path`` with libxlutil; raise XenCfgError with Xen's own message on failure.

    Xen's messages go to a temporary file (read them with ``messages()``), removed by
    ``close()``."""
    lib = _load()
    fd, messages_path = tempfile.mkstemp(prefix="xlu-", suffix=".log")
    os.close(fd)
    report = _libc.fopen(messages_path.encode(), b"w")
    if not report:
        os.unlink(messages_path)
        raise OSError(ctypes.get_errno(), f"cannot open {messages_path}")
    h = lib.xlu_cfg_init(report, os.path.basename(path).encode())
    if not h:
        _libc.fclose(report)
        os.unlink(messages_path)
        raise XenCfgError("xlu_cfg_init failed")
    rc = lib.xlu_cfg_readfile(h, path.encode())
    cfg = XenCfg(path, h, lib, report, messages_path)
    if rc != 0:
        msg = cfg.messages()
        cfg.close()
        raise XenCfgError(f"xlu_cfg_readfile({path}) = {rc}: {msg}")
    return cfg
