"""Flickr photo ids, user NSIDs and URLs: canonical forms, and which photo or author a Flickr URL names.

Used by the opt-out list (data_prep.optout) to turn whatever a removal request quotes into the two keys
YFCC100M / CommonCatalog rows carry: the numeric photo id and the author's NSID (e.g. 12345678@N00).
Hand-written: no maintained library parses Flickr's URL forms (short links use Flickr's own base58).

URL forms understood (any case of scheme and host, with or without scheme or www., query and fragment ignored):
  photo   flickr.com/photos/<user>/<id>[/in/...|/sizes/...|/lightbox|...], flickr.com/photos/<user>/with/<id>,
          flickr.com/photo.gne?id=<id> (and photo_zoom.gne), flic.kr/p/<base58>, m.flickr.com/photos/...,
          m.flickr.com/#/photos/..., static download URLs <host>/[<farm>/]<server>/<id>_<secret>[_<size>...].<ext>
          on staticflickr.com, static.flickr.com and their farm subdomains (any size suffix, any case of secret)
  author  flickr.com/photos/<nsid>[/][page<N>], flickr.com/people/<nsid>
  alias   the same author pages with a path alias instead of an NSID: ("alias", name) for the caller to map
Anything else on a Flickr host (albums, galleries, favorites, groups, tags, search, flic.kr/ps/...) names no
single photo or author and raises Unresolvable; a URL on another host gives None.
"""
from __future__ import annotations

import re
import urllib.parse

# Flickr's base58 alphabet (no 0, O, I, l), as its short links flic.kr/p/<code> use it.
BASE58_ALPHABET = "123456789abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ"
_BASE58_VALUE = {c: i for i, c in enumerate(BASE58_ALPHABET)}

_PHOTO_ID_RE = re.compile(r"^(\d+)(?:\.0*)?$", re.ASCII)  # 02868456581, 2868456581.0 (a spreadsheet's float)
_NSID_RE = re.compile(r"^(\d+)@[nN](\d+)$", re.ASCII)
_STATIC_FILE_RE = re.compile(r"^(\d+)_[0-9a-f]+(?:_[0-9a-z]+)*\.(?:jpe?g|png|gif|webp|mp4)$", re.ASCII | re.I)
_PAGE_N_RE = re.compile(r"^page\d+$", re.I)
# First path words under flickr.com/photos/ that are Flickr pages, not a user.
_NOT_A_USER = {"tags", "search", "upload", "organize", "friends", "me", "recent"}
# Sub-pages of a user that name a subset of the photos or other people's photos, never one photo or the author.
_SUBSETS = {"albums", "sets", "favorites", "galleries", "tags", "archives", "map", "collections", "popular",
            "stats", "groups", "contacts", "show", "page", "camera-roll"}


class Unresolvable(ValueError):
    """A value that names no photo id or author NSID; the message says why."""


def canonical_photo_id(value) -> int | None:
    """The photo id as an int ("02868456581", "2868456581.0", 2868456581), or None if it is not one."""
    if type(value) is str and value.isdigit() and value.isascii():  # the common case, once per metadata row
        return int(value)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float):
        return int(value) if value.is_integer() and 0 <= value < 2**53 else None
    match = _PHOTO_ID_RE.match(str(value).strip())
    return int(match.group(1)) if match else None


def canonical_nsid(value) -> str | None:
    """An NSID in Flickr's spelling ("12345678@N00" for "12345678@n00"), or None if it is not one."""
    match = _NSID_RE.match(str(value).strip())
    return f"{match.group(1)}@N{match.group(2)}" if match else None


def base58_decode(code: str) -> int:
    number = 0
    for char in code:
        if char not in _BASE58_VALUE:
            raise Unresolvable(f"short link code {code!r} has {char!r}, not in Flickr's base58 alphabet")
        number = number * 58 + _BASE58_VALUE[char]
    return number


def base58_encode(number: int) -> str:
    digits = ""
    while True:
        number, rest = divmod(number, 58)
        digits = BASE58_ALPHABET[rest] + digits
        if number == 0:
            return digits


def split_url(url: str) -> urllib.parse.SplitResult | None:
    """The URL's parts (a scheme added when missing; a URL-encoded URL decoded), or None if it is none."""
    text = str(url).strip()
    if text.lower().startswith(("http%3a", "https%3a")):
        text = urllib.parse.unquote(text)
    if "://" not in text:
        text = "http:" + text if text.startswith("//") else "http://" + text
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # raises on a bad port
    except ValueError:
        return None
    return parts if parts.hostname and "." in parts.hostname else None


def is_flickr_host(host: str) -> bool:
    host = host.lower().rstrip(".")
    return host in ("flickr.com", "flic.kr", "www.flic.kr", "staticflickr.com") or host.endswith(
        (".flickr.com", ".staticflickr.com"))


def flickr_target(url: str) -> tuple[str, int | str] | None:
    """("photo", id) | ("author", NSID) | ("alias", lower-case path alias) named by a Flickr URL; None when the
    URL is not on a Flickr host. Raises Unresolvable for a Flickr URL that names no single photo or author."""
    parts = split_url(url)
    if parts is None or not is_flickr_host(parts.hostname):
        return None
    host = parts.hostname.lower().rstrip(".")
    path = parts.path
    if host == "m.flickr.com" and path.strip("/") == "" and parts.fragment.startswith("/"):
        path = parts.fragment.split("?")[0]  # the old mobile site: m.flickr.com/#/photos/<user>/<id>/
    segments = [urllib.parse.unquote(s) for s in path.split("/") if s]
    words = [s.lower() for s in segments]
    if host in ("flic.kr", "www.flic.kr"):
        if len(segments) >= 2 and words[0] == "p":
            return "photo", base58_decode(segments[1])
        raise Unresolvable("a flic.kr link that is not a photo short link (flic.kr/p/<code>)")
    if host.endswith("staticflickr.com") or host == "static.flickr.com" or host.endswith(".static.flickr.com"):
        match = _STATIC_FILE_RE.match(segments[-1]) if segments else None
        if match:
            return "photo", int(match.group(1))
        raise Unresolvable("a Flickr static URL whose file name is not <photo id>_<secret>[_<size>].<ext>")
    if words and words[0] in ("photo.gne", "photo_zoom.gne"):
        ids = urllib.parse.parse_qs(parts.query).get("id", [])
        if len(ids) == 1 and canonical_photo_id(ids[0]) is not None:
            return "photo", canonical_photo_id(ids[0])
        raise Unresolvable(f"{words[0]} without a numeric id= parameter")
    if len(words) >= 2 and words[0] in ("photos", "people") and words[1] not in _NOT_A_USER:
        user = segments[1]
        rest = words[2:]
        if words[0] == "photos" and rest:
            if rest[0].isascii() and rest[0].isdigit():
                return "photo", int(rest[0])
            if rest[0] == "with" and len(rest) >= 2 and rest[1].isascii() and rest[1].isdigit():
                return "photo", int(rest[1])
            if not (len(rest) == 1 and _PAGE_N_RE.match(rest[0])):
                what = rest[0] if rest[0] in _SUBSETS else f"'{segments[2]}' page"
                raise Unresolvable(f"a Flickr {what} URL names a set of photos, not one photo or an author: "
                                   f"list the photos (or the author) instead")
        elif words[0] == "people" and rest:
            raise Unresolvable(f"a Flickr people/<user>/{segments[2]} URL is not the author's page")
        nsid = canonical_nsid(user)
        return ("author", nsid) if nsid else ("alias", user.lower())
    raise Unresolvable("a Flickr URL that is not a photo, photostream or profile page")
