"""ChaCha20-Poly1305 decryption with the OpenSSL the interpreter already holds.

Why it exists: an agent opens the Secret values sealed for it (shared.seal). Opened
with `cryptography`, each agent that ever received a Secret kept that library's
extension in memory for good: 8.6 MiB of RSS on this machine (issue 16), a third of
an idle agent. The `ssl` module already maps OpenSSL's libcrypto into every agent (the
link is TLS), and libcrypto has the cipher (`EVP_chacha20_poly1305`), so the agent
calls it through ctypes (which its runtime imports anyway) and loads nothing new.

`open_chacha20_poly1305` is the only entry point; it returns None when this process
has no usable libcrypto (another platform, a static build, a library replaced on disk
since it was mapped), and the caller falls back to `cryptography`. The calls are
OpenSSL's EVP API as of 1.1.0 (the AEAD controls, `EVP_chacha20_poly1305`); Python
3.10 and later build `ssl` only against OpenSSL 1.1.1 or newer, so any libcrypto found
here has them. Sealing stays on `cryptography` (the cloud has it loaded anyway).
"""

from __future__ import annotations

import ctypes
import threading

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_EVP_CTRL_AEAD_SET_IVLEN = 0x9
_EVP_CTRL_AEAD_SET_TAG = 0x11


class InvalidTag(Exception):
    """The ciphertext, its tag or the associated data does not match the key."""


_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_looked = False


def _libcrypto_path() -> str | None:
    """The libcrypto this process has mapped (through `ssl` or `hashlib`), if any."""
    import ssl  # noqa: F401  (maps libcrypto if the interpreter links it dynamically)

    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rstrip("\n").split(" ")[-1]
                if "/libcrypto.so" in path:
                    return path
    except OSError:
        pass
    return None


def _bind() -> ctypes.CDLL | None:
    path = _libcrypto_path()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
        cipher = lib.EVP_chacha20_poly1305
    except (OSError, AttributeError):
        return None
    vp, ip, c_int = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int
    cipher.restype, cipher.argtypes = vp, []
    lib.EVP_CIPHER_CTX_new.restype, lib.EVP_CIPHER_CTX_new.argtypes = vp, []
    lib.EVP_CIPHER_CTX_free.restype, lib.EVP_CIPHER_CTX_free.argtypes = None, [vp]
    lib.EVP_DecryptInit_ex.restype = c_int
    lib.EVP_DecryptInit_ex.argtypes = [vp, vp, vp, ctypes.c_char_p, ctypes.c_char_p]
    lib.EVP_CIPHER_CTX_ctrl.restype = c_int
    lib.EVP_CIPHER_CTX_ctrl.argtypes = [vp, c_int, c_int, vp]
    lib.EVP_DecryptUpdate.restype = c_int
    lib.EVP_DecryptUpdate.argtypes = [vp, vp, ip, ctypes.c_char_p, c_int]
    lib.EVP_DecryptFinal_ex.restype = c_int
    lib.EVP_DecryptFinal_ex.argtypes = [vp, vp, ip]
    if not cipher():
        return None
    return lib


def _library() -> ctypes.CDLL | None:
    global _lib, _looked
    with _lock:
        if not _looked:
            _lib, _looked = _bind(), True
        return _lib


def open_chacha20_poly1305(key: bytes, nonce: bytes, data: bytes,
                           aad: bytes) -> bytes | None:
    """The plaintext of `data` (ciphertext || 16-byte tag, as `cryptography`'s
    ChaCha20Poly1305.encrypt makes it); InvalidTag if it does not authenticate;
    None if this process has no libcrypto to do it with. ValueError for a key,
    nonce or data of the wrong size."""
    if len(key) != KEY_BYTES or len(nonce) != NONCE_BYTES:
        raise ValueError("ChaCha20-Poly1305 takes a 32-byte key and a 12-byte nonce")
    if len(data) < TAG_BYTES or len(data) > 2**31 - 1 or len(aad) > 2**31 - 1:
        raise ValueError(f"ChaCha20-Poly1305 data of {len(data)} bytes")
    lib = _library()
    if lib is None:
        return None
    ct, tag = data[:-TAG_BYTES], data[-TAG_BYTES:]
    ctx = lib.EVP_CIPHER_CTX_new()
    if not ctx:
        raise MemoryError("EVP_CIPHER_CTX_new")
    try:
        out = ctypes.create_string_buffer(len(ct) + TAG_BYTES)  # room for the final block
        n = ctypes.c_int(0)
        tag_buf = ctypes.create_string_buffer(tag, TAG_BYTES)
        ok = (lib.EVP_DecryptInit_ex(ctx, lib.EVP_chacha20_poly1305(), None, None, None) == 1
              and lib.EVP_CIPHER_CTX_ctrl(ctx, _EVP_CTRL_AEAD_SET_IVLEN, NONCE_BYTES,
                                          None) == 1
              and lib.EVP_DecryptInit_ex(ctx, None, None, key, nonce) == 1
              and lib.EVP_CIPHER_CTX_ctrl(ctx, _EVP_CTRL_AEAD_SET_TAG, TAG_BYTES,
                                          ctypes.cast(tag_buf, ctypes.c_void_p)) == 1)
        if not ok:
            raise RuntimeError("libcrypto refused to set up ChaCha20-Poly1305")
        base = ctypes.addressof(out)
        if aad and lib.EVP_DecryptUpdate(ctx, None, ctypes.byref(n), aad, len(aad)) != 1:
            raise InvalidTag()
        n.value = 0
        if ct and lib.EVP_DecryptUpdate(ctx, base, ctypes.byref(n), ct, len(ct)) != 1:
            raise InvalidTag()
        size = n.value
        if not 0 <= size <= len(ct):
            raise RuntimeError(f"libcrypto wrote {size} bytes for {len(ct)}")
        final = ctypes.c_int(0)
        if lib.EVP_DecryptFinal_ex(ctx, base + size, ctypes.byref(final)) != 1:
            raise InvalidTag()
        return out.raw[:size + final.value]
    finally:
        lib.EVP_CIPHER_CTX_free(ctx)
