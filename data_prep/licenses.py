"""One fixed set of license values, normalised from what Flickr/YFCC100M/CommonCatalog metadata says.

Rules (a training image must be traceable to a license that allows the split):
  * The license URL decides first (creativecommons.org/licenses/<code>/<version>/[<port>/][deed.xx|legalcode]),
    any scheme, case, `www.`, trailing slash, query or fragment. The name is the fallback
    ("Attribution-NonCommercial-ShareAlike License", "CC BY-SA 2.0", "All Rights Reserved", a Flickr
    numeric license id such as "4").
  * If URL and name both parse and disagree the row is treated as UNKNOWN (reason "conflict"): a
    compliance pipeline must not guess which field is right.
  * A filled URL field that does not parse never lets the name decide: a creativecommons.org URL that is no
    known license (nc/1.0, by-nd/5.0, ...) is UNKNOWN "unrecognised_url"; any other URL (another host, or
    not a URL at all) with a CC name is UNKNOWN "non_cc_url". The name decides only when the URL is empty.
  * Anything unparseable, empty, or a CC 1.0 license without attribution (nc/1.0, sa/1.0, ...) is UNKNOWN.
  * license_notice() gives the words and canonical deed URL an attribution notice names ("CC BY-SA 2.0").

Splits (arXiv 2310.16825 and the project issue):
  C  = {CC-BY, CC-BY-SA}             commercial use allowed
  NC = C + {CC-BY-NC, CC-BY-NC-SA}   non-commercial
  NoDerivs, All Rights Reserved, "No known copyright restrictions", US Government Work and UNKNOWN never
  enter a split (they are counted as dropped). CC0 and the Public Domain Mark are excluded by default so
  that C means exactly what the paper means (YFCC100M, which predates Flickr's CC0/PDM options, has none);
  `include_public_domain=True` (--include-public-domain) adds them to both splits, which is safe because
  they impose no condition that CC-BY does not.
"""

from __future__ import annotations

import enum
import functools
import re
import urllib.parse


class License(str, enum.Enum):
    CC0 = "CC0"
    PDM = "PDM"  # Public Domain Mark: a label, not a license
    CC_BY = "CC-BY"
    CC_BY_SA = "CC-BY-SA"
    CC_BY_NC = "CC-BY-NC"
    CC_BY_NC_SA = "CC-BY-NC-SA"
    CC_BY_ND = "CC-BY-ND"
    CC_BY_NC_ND = "CC-BY-NC-ND"
    NO_KNOWN_COPYRIGHT = "NO-KNOWN-COPYRIGHT-RESTRICTIONS"  # Flickr Commons institutions
    US_GOVERNMENT_WORK = "US-GOVERNMENT-WORK"
    ALL_RIGHTS_RESERVED = "ALL-RIGHTS-RESERVED"
    UNKNOWN = "UNKNOWN"

    def __str__(self) -> str:
        return self.value


SPLITS: dict[str, frozenset[License]] = {
    "C": frozenset({License.CC_BY, License.CC_BY_SA}),
    "NC": frozenset({License.CC_BY, License.CC_BY_SA, License.CC_BY_NC, License.CC_BY_NC_SA}),
}
PUBLIC_DOMAIN = frozenset({License.CC0, License.PDM})

# flickr.photos.licenses.getInfo ids 0-10 (the ids YFCC100M-era and current Flickr dumps carry).
FLICKR_LICENSE_IDS: dict[int, License] = {
    0: License.ALL_RIGHTS_RESERVED,
    1: License.CC_BY_NC_SA,
    2: License.CC_BY_NC,
    3: License.CC_BY_NC_ND,
    4: License.CC_BY,
    5: License.CC_BY_SA,
    6: License.CC_BY_ND,
    7: License.NO_KNOWN_COPYRIGHT,
    8: License.US_GOVERNMENT_WORK,
    9: License.CC0,
    10: License.PDM,
}

# Modifier set of a CC "by" license -> License. {"sa", "nd"} together is not a license.
_BY_MODIFIERS: dict[frozenset[str], License] = {
    frozenset(): License.CC_BY,
    frozenset({"sa"}): License.CC_BY_SA,
    frozenset({"nc"}): License.CC_BY_NC,
    frozenset({"nc", "sa"}): License.CC_BY_NC_SA,
    frozenset({"nd"}): License.CC_BY_ND,
    frozenset({"nc", "nd"}): License.CC_BY_NC_ND,
}
_CC_VERSIONS = {"1.0", "2.0", "2.1", "2.5", "3.0", "4.0"}
_CC_HOSTS = {"creativecommons.org", "www.creativecommons.org"}
_JURISDICTION_RE = re.compile(r"^[a-z]{2}(-[a-z]{2})?$|^scotland$")  # ports: us, de, es, scotland, ...
_LAST_SEGMENT_RE = re.compile(r"^(deed(\.[a-z_-]+)?|legalcode(\.[a-z_-]+)?|rdf|index\.html?)$")


def split_licenses(split: str, include_public_domain: bool = False) -> frozenset[License]:
    """The licenses allowed in split "C" or "NC"."""
    try:
        allowed = SPLITS[split.upper()]
    except KeyError:
        raise ValueError(f"unknown split {split!r}: expected one of {sorted(SPLITS)}") from None
    return allowed | PUBLIC_DOMAIN if include_public_domain else allowed


def _split_url(url: str | None) -> urllib.parse.SplitResult | None:
    """The URL as parts (lower case, URL-encoded dump fields decoded, a scheme added if missing); None if empty
    or unparseable."""
    if not url:
        return None
    text = url.strip()
    if "%2f" in text.lower() or "%3a" in text.lower():  # URL-encoded dump field
        text = urllib.parse.unquote(text)
    text = text.strip().lower()
    if not text:
        return None
    if "://" not in text:
        text = "http://" + text.lstrip("/")
    try:
        parsed = urllib.parse.urlsplit(text)
        parsed.port  # raises on a non-numeric port
    except ValueError:
        return None
    return parsed


def is_creativecommons_url(url: str | None) -> bool:
    """True when the URL points at creativecommons.org (any scheme, port or path): such a URL is the
    license's own claim, so when it does not parse the name must not decide instead."""
    parsed = _split_url(url)
    host = (parsed.hostname or "") if parsed else ""
    return host == "creativecommons.org" or host.endswith(".creativecommons.org")


def _parse_cc_url(url: str | None) -> tuple[License, str | None, str | None] | None:
    """(License, version, jurisdiction port) of a creativecommons.org license URL, or None."""
    parsed = _split_url(url)
    if parsed is None or parsed.scheme not in ("http", "https") or parsed.hostname not in _CC_HOSTS \
            or parsed.port is not None:
        return None
    parts = [p for p in parsed.path.split("/") if p]
    if parts and _LAST_SEGMENT_RE.match(parts[-1]):
        parts = parts[:-1]
    if len(parts) >= 2 and parts[0] == "publicdomain":
        kind = {"zero": License.CC0, "mark": License.PDM}.get(parts[1])
        ok = kind and len(parts) <= 3 and (len(parts) == 2 or parts[2] == "1.0")
        return (kind, "1.0", None) if ok else None
    if len(parts) < 2 or parts[0] != "licenses" or len(parts) > 4:
        return None
    if len(parts) >= 3 and parts[2] not in _CC_VERSIONS:
        return None
    if len(parts) == 4 and not _JURISDICTION_RE.match(parts[3]):
        return None
    lic = _license_from_code(parts[1].split("-"))
    if lic is None:
        return None
    return lic, (parts[2] if len(parts) >= 3 else None), (parts[3] if len(parts) == 4 else None)


def license_from_url(url: str | None) -> License | None:
    """License named by a creativecommons.org URL, or None when the URL is missing or not one we trust."""
    parsed = _parse_cc_url(url)
    return parsed[0] if parsed else None


def _license_from_code(tokens: list[str]) -> License | None:
    """["by", "nc", "sa"] (any order, as in the legacy by-nd-nc/1.0) -> License; None if not a BY license."""
    if "by" not in tokens or len(set(tokens)) != len(tokens) or not set(tokens) <= {"by", "nc", "sa", "nd"}:
        return None
    return _BY_MODIFIERS.get(frozenset(tokens) - {"by"})


_NAME_EXACT: dict[str, License] = {
    "all rights reserved": License.ALL_RIGHTS_RESERVED,
    "no known copyright restrictions": License.NO_KNOWN_COPYRIGHT,
    "united states government work": License.US_GOVERNMENT_WORK,
    "us government work": License.US_GOVERNMENT_WORK,
    "public domain dedication (cc0)": License.CC0,
    "public domain dedication": License.CC0,
    "cc0": License.CC0,
    "cc0 1.0": License.CC0,
    "cc0 1.0 universal": License.CC0,
    "cc-0": License.CC0,
    "public domain mark": License.PDM,
    "public domain mark 1.0": License.PDM,
    "pdm": License.PDM,
}
_NAME_TOKENS = {
    "attribution": "by", "by": "by",
    "noncommercial": "nc", "nc": "nc",
    "sharealike": "sa", "sa": "sa",
    "noderivs": "nd", "noderivatives": "nd", "nd": "nd",
}
_NAME_NOISE = {"creative", "commons", "cc", "license", "licence", "generic", "unported", "international", ""}
_NAME_PHRASES = [  # spelled-out variants -> one token
    (re.compile(r"non[\s_-]*commercial"), "noncommercial"),
    (re.compile(r"share[\s_-]*alike"), "sharealike"),
    (re.compile(r"no[\s_-]*deriv(ative)?s?"), "noderivs"),
]
_VERSION_RE = re.compile(r"^v?\d(\.\d)?$")


def license_from_name(name: str | None) -> License | None:
    """License named in words ("Attribution-ShareAlike License", "CC BY-NC 4.0") or by a Flickr numeric id."""
    if name is None:
        return None
    text = urllib.parse.unquote_plus(str(name)).strip().lower()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return FLICKR_LICENSE_IDS.get(int(text))
    text = re.sub(r"\s+", " ", text)
    if text in _NAME_EXACT:
        return _NAME_EXACT[text]
    for pattern, token in _NAME_PHRASES:
        text = pattern.sub(token, text)
    tokens = []
    for word in re.split(r"[\s\-_/(),]+", text):
        if word in _NAME_NOISE or _VERSION_RE.match(word):
            continue
        if word not in _NAME_TOKENS:
            return None  # a word we do not understand: do not guess
        tokens.append(_NAME_TOKENS[word])
    return _license_from_code(sorted(set(tokens))) if tokens else None  # names may repeat: "Attribution (CC BY)"


# Licenses that are not Creative Commons: their URLs (Flickr's usage page, usa.gov) are not CC URLs, and a
# name naming one of them never admits a row, so the name may say which restrictive label it is.
_NON_CC = frozenset({License.ALL_RIGHTS_RESERVED, License.NO_KNOWN_COPYRIGHT, License.US_GOVERNMENT_WORK})


@functools.lru_cache(maxsize=65536)  # metadata repeats a few dozen (url, name) pairs millions of times
def classify_license(url: str | None, name: str | None) -> tuple[License, str]:
    """(License, how it was decided). how is "url" or "name" when a field decided, else the reason the row is
    UNKNOWN:
      conflict          URL and name both parse and disagree;
      unrecognised_url  a creativecommons.org URL that is no known license (e.g. nc/1.0, by-nd/5.0): a
                        restrictive or unknown URL is never overruled by a permissive name;
      non_cc_url        the URL field is filled but is not a CC license URL (another host, not a URL at all)
                        while the name claims a CC license (or is empty): the claim cannot be verified;
      unrecognised      neither field says anything we understand;
      missing           both fields empty.
    The name alone decides only when the URL field is empty (or, for the non-CC labels All Rights Reserved /
    No known copyright restrictions / US Government Work, when the URL is that label's own non-CC page)."""
    from_name = license_from_name(name)
    if (url or "").strip():
        from_url = license_from_url(url)
        if from_url is None:
            if is_creativecommons_url(url):
                return License.UNKNOWN, "unrecognised_url"
            if from_name in _NON_CC:
                return from_name, "name"
            if from_name is None and (name or "").strip():
                return License.UNKNOWN, "unrecognised"
            return License.UNKNOWN, "non_cc_url"
        if from_name is not None and from_name != from_url:
            return License.UNKNOWN, "conflict"
        return from_url, "url"
    if from_name is not None:
        return from_name, "name"
    if not (name or "").strip():
        return License.UNKNOWN, "missing"
    return License.UNKNOWN, "unrecognised"


def normalize_license(url: str | None = None, name: str | None = None) -> License:
    """The License of a row from its license URL (first) and name (fallback)."""
    return classify_license(url, name)[0]


def in_split(license: License | str, split: str, include_public_domain: bool = False) -> bool:
    try:
        license = License(license)
    except ValueError:
        return False
    return license in split_licenses(split, include_public_domain)


# ---------------------------------------------------------------------------------------------- notices
# Flickr's own names for its six CC licenses (YFCC100M's licensename, Flickr license ids 1-6) are the
# 2.0 Generic licenses: Flickr's license list pairs each of them with its /2.0/ URL.
_FLICKR_NAME_VERSION = "2.0"
_FLICKR_NAMES = {"attribution license", "attribution-sharealike license", "attribution-noderivs license",
                 "attribution-noncommercial license", "attribution-noncommercial-sharealike license",
                 "attribution-noncommercial-noderivs license"}
_NAME_VERSION_RE = re.compile(r"(?<![\d.])(1\.0|2\.0|2\.1|2\.5|3\.0|4\.0)(?![\d.])")
_PUBLIC_DOMAIN_NOTICE = {License.CC0: ("CC0 1.0", "https://creativecommons.org/publicdomain/zero/1.0/"),
                         License.PDM: ("Public Domain Mark 1.0", "https://creativecommons.org/publicdomain/mark/1.0/")}


def license_notice(url: str | None, name: str | None, license: License | str | None = None) -> tuple[str, str]:
    """(label in words, canonical deed URL) for an attribution notice, e.g. ("CC BY-SA 2.0",
    "https://creativecommons.org/licenses/by-sa/2.0/"), decoded from whichever of URL / name the row carries
    (URL first; a URL-encoded name such as "Attribution+License" is decoded). The version comes from the URL,
    else from the name, else 2.0 for Flickr's own license names / ids (the YFCC100M ones); with none of
    these the label has no version and links the license's unversioned page. `license` (the row's License)
    is the fallback when neither field parses. ("", "") when there is no CC license to name."""
    parsed = _parse_cc_url(url)
    if parsed is not None:
        lic, version, port = parsed
    else:
        lic = license_from_name(name)
        if lic is None and license is not None:
            try:
                lic = License(license)
            except ValueError:
                lic = None
        version = port = None
        text = urllib.parse.unquote_plus(str(name or "")).strip().lower()
        if lic is not None and lic == license_from_name(name):
            found = _NAME_VERSION_RE.search(text)
            if found:
                version = found.group(1)
            elif re.sub(r"\s+", " ", text) in _FLICKR_NAMES or (text.isascii() and text.isdigit()):
                version = _FLICKR_NAME_VERSION
    if lic in _PUBLIC_DOMAIN_NOTICE:
        return _PUBLIC_DOMAIN_NOTICE[lic]
    code = next((sorted(m) for m, value in _BY_MODIFIERS.items() if value == lic), None)
    if code is None:  # not a CC license: nothing to link
        return (str(lic) if lic is not None else ""), ""
    slug = "-".join(["by", *[t for t in ("nc", "sa", "nd") if t in code]])
    label = "CC " + slug.upper() + (f" {version}" if version else "") + (f" {port.upper()}" if port else "")
    deed = f"https://creativecommons.org/licenses/{slug}/" + (f"{version}/" if version else "") + \
        (f"{port}/" if port else "")
    return label, deed
