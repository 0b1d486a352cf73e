"""C2PA manifests ("Content Credentials", the `c2pa-python` package): what we assert, signing, and reading back.

Assertions in every manifest we sign:
  c2pa.actions                 one `c2pa.created` action with digitalSourceType trainedAlgorithmicMedia (IPTC)
  org.commoncanvas.generation  generator (this project) and model name, model id (the watermark's payload),
                               training-data split (C / NC / ...) and its license terms as the model card states
                               them, what the watermark holds (or why there is none), and the prompt / seed only
                               when the user opted in
Signing needs an X.509 certificate chain (PEM, signer first) and its private key. c2pa-rs checks the certificate
profile: an end-entity certificate (CA:false, keyUsage digitalSignature, an extendedKeyUsage such as
emailProtection or documentSigning) issued by a CA; a bare self-signed certificate is refused.
"""
from __future__ import annotations

import dataclasses
import io
import os

GENERATOR = "CommonCanvas recipes"
ASSERTION = "org.commoncanvas.generation"
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
FORMATS = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
ALGORITHMS = ("es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519")


class SigningError(ValueError):
    """Signing material missing or unusable; the message is one line naming the setting."""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("commoncanvas-recipes")
    except Exception:  # not pip-installed (run from a checkout)
        return "source"


def manifest_definition(generation: dict, title: str, mime: str) -> dict:
    """The manifest JSON c2pa.Builder takes."""
    return {
        "claim_generator_info": [{"name": GENERATOR, "version": _version()}],
        "title": title,
        "format": mime,
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [{
                "action": "c2pa.created",
                "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                "softwareAgent": {"name": GENERATOR, "version": _version()},
            }]}},
            {"label": ASSERTION, "data": generation},
        ],
    }


def _context(trust_anchors: str | None = None):
    import c2pa

    settings = {"builder": {"thumbnail": {"enabled": False}}}  # the image itself is small; no second copy inside
    if trust_anchors:
        with open(trust_anchors) as f:
            settings["trust"] = {"user_anchors": f.read()}
    return c2pa.Context(c2pa.Settings.from_dict(settings))


def _read_pem(path: str | None, setting: str, what: str) -> bytes:
    if not path:
        raise SigningError(f"C2PA signing needs {what}: set {setting}")
    if not os.path.isfile(path):
        raise SigningError(f"{setting}={path}: no such file ({what})")
    with open(path, "rb") as f:
        return f.read()


@dataclasses.dataclass
class Signer:
    """A c2pa signer made once per process from the configured files; `settings` names them for error lines."""

    signer: object
    context: object

    def sign(self, data: bytes, mime: str, manifest: dict) -> bytes:
        import c2pa

        out = io.BytesIO()
        c2pa.Builder(manifest, context=self.context).sign(self.signer, mime, io.BytesIO(data), out)
        return out.getvalue()


def load_signer(cert: str | None, key: str | None, alg: str = "es256", tsa_url: str | None = None,
                names: tuple[str, str, str] = ("provenance.sign_cert", "provenance.sign_key", "provenance.signing_alg")
                ) -> Signer:
    """Reads the PEM files and proves they sign (one throwaway signature), so a bad key fails before any image."""
    import c2pa
    from PIL import Image

    cert_name, key_name, alg_name = names
    if alg.lower() not in ALGORITHMS:
        raise SigningError(f"{alg_name}={alg}: not one of {', '.join(ALGORITHMS)}")
    cert_pem = _read_pem(cert, cert_name, "a signing certificate chain (PEM, signer first)")
    key_pem = _read_pem(key, key_name, "the certificate's private key (PEM)")
    try:
        signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(alg.lower(), cert_pem, key_pem, tsa_url))
        result = Signer(signer, _context())
        probe = io.BytesIO()
        Image.new("RGB", (8, 8)).save(probe, format="PNG")
        result.sign(probe.getvalue(), "image/png", manifest_definition({}, "probe.png", "image/png"))
    except c2pa.C2paError as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SigningError(f"{cert_name}={cert} / {key_name}={key}: cannot sign with them ({detail})") from None
    return result


@dataclasses.dataclass
class ManifestReport:
    state: str  # "none" | "Invalid" | "Valid" | "Trusted" (c2pa validation states)
    generation: dict | None  # our assertion, when present
    source_type: str | None  # digitalSourceType of the c2pa.created action
    signer: str | None  # certificate common name (issuer organisation)
    failures: list  # [(code, explanation)] of the active manifest's failed checks
    error: str | None = None  # the manifest could not be read at all

    @property
    def signature_ok(self) -> bool:
        """Signature and hashes valid; an untrusted signer alone is not a failure (no trust list was given)."""
        return self.state in ("Valid", "Trusted") or (
            self.state != "none" and self.error is None
            and all(code == "signingCredential.untrusted" for code, _ in self.failures))


def read_manifest(path: str, trust_anchors: str | None = None) -> ManifestReport:
    import c2pa

    mime = FORMATS.get(os.path.splitext(path)[1].lower())
    try:
        with open(path, "rb") as f:
            reader = c2pa.Reader.try_create(mime or "image/png", f, context=_context(trust_anchors))
            if reader is None:
                return ManifestReport("none", None, None, None, [])
            state = reader.get_validation_state() or "Invalid"
            results = (reader.get_validation_results() or {}).get("activeManifest") or {}
            manifest = reader.get_active_manifest() or {}
    except c2pa.C2paError as exc:
        return ManifestReport("Invalid", None, None, None, [], error=str(exc).splitlines()[0] if str(exc) else "unreadable")
    generation, source_type = None, None
    for assertion in manifest.get("assertions", []):
        label = assertion.get("label", "")
        if label == ASSERTION:
            generation = assertion.get("data")
        elif label.startswith("c2pa.actions"):
            for action in assertion.get("data", {}).get("actions", []):
                if action.get("action") == "c2pa.created":
                    source_type = action.get("digitalSourceType")
    info = manifest.get("signature_info") or {}
    signer = info.get("common_name") or info.get("issuer")
    if signer and info.get("issuer") and info.get("issuer") != signer:
        signer = f"{signer} ({info['issuer']})"
    failures = [(f.get("code"), f.get("explanation")) for f in results.get("failure", [])]
    return ManifestReport(state, generation, source_type, signer, failures)
