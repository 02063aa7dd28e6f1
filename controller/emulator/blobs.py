"""Blob storage: SAS-checked Put Blob, Put Block + Put Block List, Get and Head Blob, on files in the state folder.

A SAS is signed for one blob (``sr=b``, v1 artifact links) or one container (``sr=c``, v2
datastore secrets and pending uploads). Put Blob with ``If-None-Match: *`` on an existing blob is
``409 BlobAlreadyExists``; ``?comp=metadata`` sets ``x-ms-meta-*``, which Head Blob returns (the
v2 SDK's "already uploaded" check reads ``upload_status`` there).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import re
import time
import uuid
from pathlib import Path
from urllib.parse import quote

from controller.emulator.records import EmulatorBase, now_iso
from controller.emulator.routetables import Request, Response, Router


class BlobRoutes(EmulatorBase):
    """Blob storage: SAS-checked Put Blob, Put Block + Put Block List, Get and Head Blob, on files in the state folder."""

    def _register_blobs(self, router: Router) -> None:
        r = router.add
        r("PUT", "blob", "/{container}/{blob+}", self.put_blob, authenticated=False)
        r("HEAD", "blob", "/{container}/{blob+}", self.head_blob, authenticated=False)
        r("GET", "blob", "/{container}/{blob+}", self.get_blob, authenticated=False)

    def _sas(self, path: str, resource: str = "b") -> str:
        """A SAS query string for one blob (``resource="b"``, ``path`` = container/blob) or one container
        (``resource="c"``, ``path`` = container)."""
        expiry = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        sig = base64.b64encode(hmac.new(self._sas_key, f"{path}\n{expiry}".encode(), hashlib.sha256).digest()).decode()
        perms = "rcwl" if resource == "c" else "rcw"
        return (f"skoid=emulator&sv=2019-07-07&st={quote(now_iso()[:19] + 'Z')}&se={quote(expiry)}&sr={resource}"
                f"&sp={perms}&sig={quote(sig, safe='')}")

    def _sas_ok(self, blob_path: str, query: dict[str, str]) -> bool:
        expiry, sig = query.get("se", ""), query.get("sig", "")
        signed = blob_path.split("/", 1)[0] if query.get("sr") == "c" else blob_path
        expected = base64.b64encode(hmac.new(self._sas_key, f"{signed}\n{expiry}".encode(), hashlib.sha256).digest()).decode()
        if not hmac.compare_digest(expected.encode(), sig.encode()):
            return False
        try:
            return datetime.datetime.strptime(expiry, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC) > datetime.datetime.now(datetime.UTC)
        except ValueError:
            return False

    def _blob_file(self, blob_path: str) -> Path:
        target = (self.blob_dir / blob_path).resolve()
        if not target.is_relative_to(self.blob_dir.resolve()):
            raise ValueError(blob_path)
        return target

    def _blob_denied(self) -> Response:
        body = (b'<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed</Code><Message>Server failed '
                b"to authenticate the request. Make sure the value of Authorization header is formed correctly including "
                b"the signature.</Message></Error>")
        return Response(403, body, {"Content-Type": "application/xml", "x-ms-error-code": "AuthenticationFailed"})

    def _blob_headers(self, data: bytes) -> dict[str, str]:
        return {"ETag": '"0x' + hashlib.md5(data).hexdigest()[:16].upper() + '"',
                "Last-Modified": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()),
                "x-ms-request-id": str(uuid.uuid4()), "x-ms-version": "2019-07-07",
                "Date": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())}

    def put_blob(self, req: Request) -> Response:
        blob_path = f"{req.params['container']}/{req.params['blob']}"
        if not self._sas_ok(blob_path, req.query):
            return self._blob_denied()
        comp = req.query.get("comp")
        if comp == "metadata":
            if not self._blob_file(blob_path).is_file():
                return Response(404, b"", {"x-ms-error-code": "BlobNotFound"})
            meta = {k.lower(): v for k, v in req.headers.items() if k.lower().startswith("x-ms-meta-")}
            self.store.put("blobmeta", blob_path, meta)
            return Response(200, b"", self._blob_headers(self._blob_file(blob_path).read_bytes()))
        if req.header("If-None-Match") == "*" and comp != "block" and self._blob_file(blob_path).is_file():
            return Response(409, b'<?xml version="1.0" encoding="utf-8"?><Error><Code>BlobAlreadyExists</Code>'
                            b"<Message>The specified blob already exists.</Message></Error>",
                            {"Content-Type": "application/xml", "x-ms-error-code": "BlobAlreadyExists"})
        if comp == "block":
            with self._lock:
                self._blocks.setdefault(blob_path, {})[req.query.get("blockid", "")] = req.body
            return Response(201, b"", {**self._blob_headers(req.body),
                                       "Content-MD5": base64.b64encode(hashlib.md5(req.body).digest()).decode(),
                                       "x-ms-request-server-encrypted": "true"})
        if comp == "blocklist":
            ids = re.findall(rb"<(?:Latest|Committed|Uncommitted)>([^<]*)</", req.body)
            with self._lock:
                blocks = self._blocks.pop(blob_path, {})
            try:
                data = b"".join(blocks[i.decode()] for i in ids)
            except KeyError:
                return Response(400, b"<Error><Code>InvalidBlockList</Code></Error>", {"Content-Type": "application/xml"})
        else:
            data = req.body
        target = self._blob_file(blob_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        meta = {k.lower(): v for k, v in req.headers.items() if k.lower().startswith("x-ms-meta-")}
        if meta:
            self.store.put("blobmeta", blob_path, meta)
        else:
            self.store.delete("blobmeta", blob_path)
        # Content-MD5 answers for the request's content: the data for Put Blob, the block list for Put Block List.
        return Response(201, b"", {**self._blob_headers(data), "Content-MD5": base64.b64encode(hashlib.md5(req.body).digest()).decode(),
                                   "x-ms-request-server-encrypted": "true"})

    def _stored_blob(self, req: Request) -> bytes | Response:
        """A blob's bytes, or the error response Azure Storage gives (bad SAS, missing blob)."""
        blob_path = f"{req.params['container']}/{req.params['blob']}"
        if not self._sas_ok(blob_path, req.query):
            return self._blob_denied()
        target = self._blob_file(blob_path)
        if not target.is_file():
            return Response(404, b"", {"x-ms-error-code": "BlobNotFound"})
        return target.read_bytes()

    def head_blob(self, req: Request) -> Response:
        data = self._stored_blob(req)
        if isinstance(data, Response):
            return data
        meta = self.store.get("blobmeta", f"{req.params['container']}/{req.params['blob']}") or {}
        return Response(200, b"", {**self._blob_headers(data), **meta, "Content-Length": str(len(data)),
                                   "x-ms-blob-type": "BlockBlob", "Content-Type": "application/octet-stream",
                                   "x-ms-creation-time": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()),
                                   "x-ms-lease-state": "available", "x-ms-lease-status": "unlocked",
                                   "x-ms-server-encrypted": "true", "Accept-Ranges": "bytes"})

    def get_blob(self, req: Request) -> Response:
        data = self._stored_blob(req)
        if isinstance(data, Response):
            return data
        headers = {**self._blob_headers(data), "x-ms-blob-type": "BlockBlob", "Content-Type": "application/octet-stream"}
        wanted = re.match(r"^bytes=(\d+)-(\d*)$", req.header("x-ms-range") or req.header("Range") or "")
        if wanted is None:
            return Response(200, data, headers)
        start = int(wanted.group(1))
        end = min(int(wanted.group(2)) if wanted.group(2) else len(data) - 1, len(data) - 1)
        if start >= len(data) and data:
            return Response(416, b"", {"x-ms-error-code": "InvalidRange", "Content-Range": f"bytes */{len(data)}"})
        return Response(206, data[start:end + 1], {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"})
