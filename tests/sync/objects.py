"""What a site holds, object by object, whether loose or packed (references/object_packs.py)."""

from __future__ import annotations

from hyperslab.references.keys import LOCATOR_PREFIX, PACK_PREFIX, object_pack_key
from hyperslab.references.object_packs import Locator
from hyperslab.storage import Site


def unpacked(site: Site) -> dict[str, bytes]:
    """Every object key → bytes, packed objects read out of their packs through the
    locators (packs and locators themselves left out), so that a packed replica
    compares equal to the loose repository it was synced from."""
    out = {
        k: site.get(k)
        for k in site.list("")
        if not k.startswith(("replicas/done/", PACK_PREFIX, LOCATOR_PREFIX))
    }
    for key in site.list(LOCATOR_PREFIX):
        leaf = key[len(LOCATOR_PREFIX) :].removesuffix(".json")
        for obj, (pack, offset, length) in Locator.from_bytes(site.get(key), leaf).locations():
            data = site.get_range(object_pack_key(pack), offset, length)
            assert out.setdefault(obj, data) == data, f"{obj} differs between copies"
    return out
