"""The published SOLO-family COCO checkpoints: one table, the only place their facts live.

Each :class:`ZooEntry` pins a file (URL, sha256 as far as it is known, size) and says how
solo-tf builds the model it fits (a preset of ``configs/`` plus overrides, the reference's
test scale) and what it is worth (the published COCO mask AP). Rows that solo-tf cannot
run are listed too, with the reason (:attr:`ZooEntry.unsupported`).

Hashes, as far as public pages give them (``shared/zoo/checkpoints.tsv`` has the sources):

- Hugging Face files (``xinlongwang/SOLO``): the full sha256 where the file's page shows
  its LFS details; none for SOLO R50 / R101 and SOLOv2-light R50, whose pages give only a
  size. ``huggingface_hub`` also checks every LFS file against the sha256 the Hub sends.
- download.openmmlab.com files: only the 8-hex-digit sha256 prefix that mmdetection puts
  in each file name (and that its own loader checks).

:func:`register` adds an entry (a private mirror, a fine-tuned model, a test's local
server); :data:`ENTRIES` is the table, by name.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping

WXINLONG_LICENSE = "BSD-2-Clause, academic use (WXinlong/SOLO); commercial use: ask the authors"
MMDET_LICENSE = "Apache-2.0 (mmdetection)"
ADELAIDET_LICENSE = "BSD-2-Clause, academic use (AdelaiDet); commercial use: ask the authors"
HF = "huggingface.co (xinlongwang/SOLO)"
OPENMMLAB = "download.openmmlab.com"

LAYOUT_NAMES = {"mmdet1": "WXinlong/SOLO (mmdetection 1.x)", "mmdet2": "mmdetection 2.x/3.x",
                "adelaidet": "AdelaiDet (detectron2)"}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA256_PREFIX = re.compile(r"^[0-9a-f]{8}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_MB = 1_000_000


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """One published checkpoint.

    Attributes:
        name: short, stable, lower case: what users type (``solov2_r50_3x``).
        variant: solo-tf's ``model.variant`` (``solov2``, ``solo``, ``decoupled_solo``), or
            the upstream kind for an unsupported row (``solov2+dcn``).
        backbone: ``resnet18`` .. ``resnet101``, or the upstream backbone for an
            unsupported row.
        schedule: ``1x`` / ``3x``.
        layout: the key names, ``mmdet1`` (WXinlong), ``mmdet2`` (mmdetection 2.x/3.x) or
            ``adelaidet``.
        url: where the file is (``https://huggingface.co/<repo>/resolve/<revision>/<file>``
            is fetched with ``huggingface_hub``; any other URL with ``pooch``).
        sha256: the file's full sha256 (64 hex digits), the 8-hex-digit prefix
            mmdetection's file names carry, or None where no public page gives it.
        size: the file's size in bytes where it is known exactly, else None.
        size_mb: the size in MB as published (exact or as a hosting page rounds it).
        mask_ap: the published COCO mask AP (WXinlong: minival / val2017; mmdet: val2017).
        test_scale: (long, short) as the reference's test config gives it: (1333, 800).
        host, license: where it is served from, and under which terms.
        preset: the solo-tf preset (``configs/<preset>.yaml``) of its architecture.
        overrides: ``model`` fields set over the preset (e.g. a ResNet-101 of a preset
            that has a ResNet-50).
        upstream: the file's own name upstream.
        unsupported: why solo-tf cannot run it (None: it can).
    """

    name: str
    variant: str
    backbone: str
    schedule: str
    layout: str
    url: str
    sha256: str | None
    size: int | None
    size_mb: float | None
    mask_ap: float | None
    test_scale: tuple[int, int]
    host: str
    license: str
    preset: str | None = None
    overrides: tuple[tuple[str, object], ...] = ()
    upstream: str = ""
    unsupported: str | None = None

    def __post_init__(self):
        if not _NAME.match(self.name):
            raise ValueError(f"zoo entry name {self.name!r}: lower-case letters, digits, '_', '.', '-' only")
        if self.sha256 is not None and not (_SHA256.match(self.sha256) or _SHA256_PREFIX.match(self.sha256)):
            raise ValueError(f"zoo entry {self.name!r}: sha256 must be 64 or 8 lower-case hex digits, got "
                             f"{self.sha256!r}")
        if self.unsupported is None and self.preset is None:
            raise ValueError(f"zoo entry {self.name!r}: a supported entry needs the preset its model is built from")
        if isinstance(self.overrides, Mapping):
            object.__setattr__(self, "overrides", tuple(sorted(self.overrides.items())))

    @property
    def supported(self) -> bool:
        return self.unsupported is None

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def hash_kind(self) -> str:
        """``sha256`` (all 64 digits pinned), ``sha256 prefix`` (8 digits) or ``none``."""
        if self.sha256 is None:
            return "none"
        return "sha256" if len(self.sha256) == 64 else "sha256 prefix"

    @property
    def canvas(self) -> tuple[int, int]:
        """The network canvas (H, W) of the test scale: short and long side, each rounded
        up to a multiple of 32 ((1333, 800) -> (800, 1344); (768, 448) -> (448, 768))."""
        long, short = self.test_scale
        return -(-short // 32) * 32, -(-long // 32) * 32

    def row(self) -> dict:
        """The listing's columns (``solo-tf models``)."""
        if self.size is not None:
            size = f"{self.size / _MB:.0f} MB"
        else:
            size = f"~{self.size_mb:.0f} MB" if self.size_mb else "?"
        return {
            "name": self.name, "variant": self.variant, "backbone": self.backbone,
            "mask AP": "" if self.mask_ap is None else f"{self.mask_ap:.1f}",
            "test scale": f"{self.test_scale[0]}x{self.test_scale[1]}", "size": size, "sha256": self.hash_kind,
            "layout": self.layout, "host": self.host, "license": self.license,
            "supported": "yes" if self.supported else f"no: {self.unsupported}",
        }


ENTRIES: dict[str, ZooEntry] = {}


def register(entry: ZooEntry, *, replace: bool = False) -> ZooEntry:
    """Add ``entry`` to :data:`ENTRIES` (``replace=True`` to overwrite one of its name)."""
    if entry.name in ENTRIES and not replace:
        raise ValueError(f"zoo entry {entry.name!r} exists; pass replace=True to overwrite it")
    ENTRIES[entry.name] = entry
    return entry


def get(name: str) -> ZooEntry:
    """The entry called ``name``; an unknown name is a KeyError listing the closest ones."""
    try:
        return ENTRIES[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(ENTRIES), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"no zoo model named {name!r}{hint} (solo-tf models lists them)") from None


def entries(supported: bool | None = None) -> list[ZooEntry]:
    """Every entry, in the table's order (``supported``: only those solo-tf can / cannot run)."""
    return [e for e in ENTRIES.values() if supported is None or e.supported == supported]


def entries_for(variant: str, backbone: str, layout: str | None = None) -> list[str]:
    """Names of the supported entries of a variant and backbone, those of ``layout`` first."""
    found = [e for e in entries(supported=True) if e.variant == variant and e.backbone == backbone]
    return [e.name for e in sorted(found, key=lambda e: (layout is not None and e.layout != layout))]


# --- the table -----------------------------------------------------------------------------------

_HF_BASE = "https://huggingface.co/xinlongwang/SOLO/resolve/main/"
_MMDET_BASE = "https://download.openmmlab.com/mmdetection/v2.0/"
R50_SCALE, LIGHT_448_SCALE, LIGHT_512_SCALE = (1333, 800), (768, 448), (852, 512)
_DCN = "deformable convolutions (DCN): solo_tf has none"
_RESNEXT = "a ResNeXt-101 backbone with deformable convolutions: solo_tf has neither"
_DECOUPLED_LIGHT = ("Decoupled SOLO light shares one mask tower (258 inputs: features, x and y) between the X and "
                    "Y outputs; solo_tf's Decoupled SOLO has a tower for each")
_ADELAIDET = ("detectron2 names and the MSRA ResNet (stride on the 1x1 conv, BGR input), which solo_tf's "
              "torchvision-layout ResNet does not reproduce")


def _wx(name, upstream, variant, backbone, schedule, sha256, mask_ap, scale, preset=None, overrides=(), size=None,
        size_mb=None, unsupported=None):
    return ZooEntry(name=name, variant=variant, backbone=backbone, schedule=schedule, layout="mmdet1",
                    url=_HF_BASE + upstream + ".pth", sha256=sha256, size=size,
                    size_mb=size / _MB if size else size_mb, mask_ap=mask_ap, test_scale=scale, host=HF,
                    license=WXINLONG_LICENSE, preset=preset, overrides=overrides, upstream=upstream,
                    unsupported=unsupported)


def _mm(name, path, variant, backbone, schedule, mask_ap, scale, preset=None, overrides=(), unsupported=None):
    prefix = re.search(r"-([0-9a-f]{8})\.pth$", path)[1]
    return ZooEntry(name=name, variant=variant, backbone=backbone, schedule=schedule, layout="mmdet2",
                    url=_MMDET_BASE + path, sha256=prefix, size=None, size_mb=None, mask_ap=mask_ap,
                    test_scale=scale, host=OPENMMLAB, license=MMDET_LICENSE, preset=preset, overrides=overrides,
                    upstream=path.rsplit("/", 1)[-1][: -len(".pth")], unsupported=unsupported)


_R101 = (("backbone", "resnet101"),)
for _entry in (
    # WXinlong/SOLO (mmdetection 1.x names), on Hugging Face since cloudstor closed (2023-12)
    _wx("solo_r50_1x", "SOLO_R50_1x", "solo", "resnet50", "1x", None, 32.9, R50_SCALE, "solo_r50", size_mb=290),
    _wx("solo_r50_3x", "SOLO_R50_3x", "solo", "resnet50", "3x", None, 35.8, R50_SCALE, "solo_r50", size_mb=290),
    _wx("solo_r101_3x", "SOLO_R101_3x", "solo", "resnet101", "3x", None, 37.1, R50_SCALE, "solo_r50", _R101,
        size_mb=442),
    _wx("decoupled_solo_r50_1x", "DECOUPLED_SOLO_R50_1x", "decoupled_solo", "resnet50", "1x",
        "79308c6d6c9d08a45f66cc65fbc1e4bbbfe109534ec71f4dd2f512f7b31d877d", 33.9, R50_SCALE, "decoupled_solo_r50",
        size_mb=320),
    _wx("decoupled_solo_r50_3x", "DECOUPLED_SOLO_R50_3x", "decoupled_solo", "resnet50", "3x",
        "57ae7529291e7b6c87d847692084a7cd64dfd56f80fc3b6733758bbd81b21180", 36.4, R50_SCALE, "decoupled_solo_r50",
        size_mb=320),
    _wx("decoupled_solo_r101_3x", "DECOUPLED_SOLO_R101_3x", "decoupled_solo", "resnet101", "3x",
        "711049ff1e5280e8a6b2d96cb09cfe7f76308192650cdcd751954aa709d661cc", 37.9, R50_SCALE, "decoupled_solo_r50",
        _R101, size=471871393),
    _wx("solov2_r50_1x", "SOLOv2_R50_1x", "solov2", "resnet50", "1x",
        "17e10fe2198665c573b363c504a1547e6a917e22fa94e926d7f8646432d8a506", 34.8, R50_SCALE, "solov2_r50",
        size_mb=372),
    _wx("solov2_r50_3x", "SOLOv2_R50_3x", "solov2", "resnet50", "3x",
        "659975203266ca2d00167790796fde961d09930c01124377d3ee3a8be3a3a660", 37.5, R50_SCALE, "solov2_r50",
        size_mb=372),
    _wx("solov2_r101_3x", "SOLOv2_R101_3x", "solov2", "resnet101", "3x",
        "7126c25eee6575ef405fc689b46510493b4dc991ebf758a12645109ed906c55f", 39.1, R50_SCALE, "solov2_r101",
        size_mb=524),
    _wx("solov2_light_r18", "SOLOv2_LIGHT_448_R18_3x", "solov2", "resnet18", "3x",
        "4f89669be79143566e02bdc51428fc10c83a3974a53326fcae1cf7e336dc6997", 29.6, LIGHT_448_SCALE,
        "solov2_light_r18", size_mb=146),
    _wx("solov2_light_r34", "SOLOv2_LIGHT_448_R34_3x", "solov2", "resnet34", "3x",
        "9243f7b9e64e4ae0a77517fed392a7f170ab3e5cad7028caa7b062c34d87d3c5", 32.0, LIGHT_448_SCALE,
        "solov2_light_r34", size_mb=226),
    _wx("solov2_light_r50", "SOLOv2_LIGHT_448_R50_3x", "solov2", "resnet50", "3x", None, 33.7, LIGHT_448_SCALE,
        "solov2_light_r50", size_mb=250),
    _wx("solov2_r101_dcn_3x", "SOLOv2_R101_DCN_3x", "solov2+dcn", "resnet101+dcn", "3x",
        "3cd436711e57047bf00a733fb606262097b4eff7121d3251305aeab3ccc249c5", 41.4, R50_SCALE, size_mb=550,
        unsupported=_DCN),
    _wx("solov2_x101_dcn_3x", "SOLOv2_X101_DCN_3x", "solov2+dcn", "resnext101_64x4d+dcn", "3x",
        "e0ef1edcb04d4e468b5bd7cc63d8de4d8267402ee180679c6c0ddbeda51f7d46", 42.4, R50_SCALE, size_mb=907,
        unsupported=_RESNEXT),
    _wx("solov2_light_512_dcn_r50", "SOLOv2_LIGHT_512_DCN_R50_3x", "solov2+dcn", "resnet50+dcn", "3x", None, 36.4,
        LIGHT_512_SCALE, size_mb=265, unsupported=_DCN),
    _wx("decoupled_solo_light_r50", "DECOUPLED_SOLO_LIGHT_R50_3x", "decoupled_solo_light", "resnet50", "3x",
        "185aa3aae847366013a89b80857306f28c49a45608c1345d2cdc84477f7dd18e", 33.0, LIGHT_512_SCALE, size=258242397,
        unsupported=_DECOUPLED_LIGHT),
    _wx("decoupled_solo_light_dcn_r50", "DECOUPLED_SOLO_LIGHT_DCN_R50_3x", "decoupled_solo_light+dcn",
        "resnet50+dcn", "3x", "d2a231ceca5cd4f0552774e7d941859e51ca59ebf6b29055aafaec5aec2071b5", 35.0,
        LIGHT_512_SCALE, size=263563477, unsupported=f"{_DECOUPLED_LIGHT}; and {_DCN}"),
    # mmdetection 2.x/3.x's retrained models (download.openmmlab.com; the file name ends in
    # the first 8 hex digits of its sha256)
    _mm("mmdet_solo_r50_1x", "solo/solo_r50_fpn_1x_coco/solo_r50_fpn_1x_coco_20210821_035055-2290a6b8.pth",
        "solo", "resnet50", "1x", 33.1, R50_SCALE, "solo_r50"),
    _mm("mmdet_solo_r50_3x", "solo/solo_r50_fpn_3x_coco/solo_r50_fpn_3x_coco_20210901_012353-11d224d7.pth",
        "solo", "resnet50", "3x", 35.9, R50_SCALE, "solo_r50"),
    _mm("mmdet_decoupled_solo_r50_1x", "solo/decoupled_solo_r50_fpn_1x_coco/"
        "decoupled_solo_r50_fpn_1x_coco_20210820_233348-6337c589.pth", "decoupled_solo", "resnet50", "1x", 33.9,
        R50_SCALE, "decoupled_solo_r50"),
    _mm("mmdet_decoupled_solo_r50_3x", "solo/decoupled_solo_r50_fpn_3x_coco/"
        "decoupled_solo_r50_fpn_3x_coco_20210821_042504-7b3301ec.pth", "decoupled_solo", "resnet50", "3x", 36.7,
        R50_SCALE, "decoupled_solo_r50"),
    _mm("mmdet_solov2_r50_1x", "solov2/solov2_r50_fpn_1x_coco/solov2_r50_fpn_1x_coco_20220512_125858-a357fa23.pth",
        "solov2", "resnet50", "1x", 34.8, R50_SCALE, "solov2_r50"),
    _mm("mmdet_solov2_r50_3x", "solov2/solov2_r50_fpn_3x_coco/solov2_r50_fpn_3x_coco_20220512_125856-fed092d4.pth",
        "solov2", "resnet50", "3x", 37.5, R50_SCALE, "solov2_r50"),
    _mm("mmdet_solov2_r101_3x", "solov2/solov2_r101_fpn_3x_coco/"
        "solov2_r101_fpn_3x_coco_20220511_095119-c559a076.pth", "solov2", "resnet101", "3x", 39.1, R50_SCALE,
        "solov2_r101"),
    _mm("mmdet_solov2_light_r18", "solov2/solov2_light_r18_fpn_3x_coco/"
        "solov2_light_r18_fpn_3x_coco_20220511_083717-75fa355b.pth", "solov2", "resnet18", "3x", 29.7,
        LIGHT_448_SCALE, "solov2_light_r18"),
    _mm("mmdet_solov2_light_r34", "solov2/solov2_light_r34_fpn_3x_coco/"
        "solov2_light_r34_fpn_3x_coco_20220511_091839-e51659d3.pth", "solov2", "resnet34", "3x", 31.9,
        LIGHT_448_SCALE, "solov2_light_r34"),
    _mm("mmdet_solov2_light_r50", "solov2/solov2_light_r50_fpn_3x_coco/"
        "solov2_light_r50_fpn_3x_coco_20220512_165256-c93a6074.pth", "solov2", "resnet50", "3x", 33.7,
        LIGHT_448_SCALE, "solov2_light_r50"),
    _mm("mmdet_decoupled_solo_light_r50", "solo/decoupled_solo_light_r50_fpn_3x_coco/"
        "decoupled_solo_light_r50_fpn_3x_coco_20210906_142703-e70e226f.pth", "decoupled_solo_light", "resnet50",
        "3x", 32.9, LIGHT_512_SCALE, unsupported=_DECOUPLED_LIGHT),
    _mm("mmdet_solov2_r101_dcn_3x", "solov2/solov2_r101_dcn_fpn_3x_coco/"
        "solov2_r101_dcn_fpn_3x_coco_20220513_214734-16c966cb.pth", "solov2+dcn", "resnet101+dcn", "3x", 41.2,
        R50_SCALE, unsupported=_DCN),
    _mm("mmdet_solov2_x101_dcn_3x", "solov2/solov2_x101_dcn_fpn_3x_coco/"
        "solov2_x101_dcn_fpn_3x_coco_20220513_214337-aef41095.pth", "solov2+dcn", "resnext101_64x4d+dcn", "3x",
        42.4, R50_SCALE, unsupported=_RESNEXT),
    # AdelaiDet (detectron2 names)
    ZooEntry(name="adelaidet_solov2_r50_3x", variant="solov2", backbone="resnet50 (MSRA)", schedule="3x",
             layout="adelaidet", url="https://huggingface.co/ZjuCv/AdelaiDet/resolve/main/SOLOv2_R50_3x.pth",
             sha256="361eb419f4398c7d7ef1292c007b767746c01a277a3b5393de84f05cdacf1d05", size=371953777,
             size_mb=371953777 / _MB, mask_ap=37.6, test_scale=R50_SCALE, host="huggingface.co (ZjuCv/AdelaiDet)",
             license=ADELAIDET_LICENSE, upstream="SOLOv2_R50_3x", unsupported=_ADELAIDET),
    ZooEntry(name="adelaidet_solov2_r101_3x", variant="solov2", backbone="resnet101 (MSRA)", schedule="3x",
             layout="adelaidet", url="https://huggingface.co/ZjuCv/AdelaiDet/resolve/main/SOLOv2_R101_3x.pth",
             sha256="689b8ce6dd82b3a1a2f8f146266e88e8e807bffaf5def04d2fd886b4a8f71aa9", size=524083079,
             size_mb=524083079 / _MB, mask_ap=39.0, test_scale=R50_SCALE, host="huggingface.co (ZjuCv/AdelaiDet)",
             license=ADELAIDET_LICENSE, upstream="SOLOv2_R101_3x", unsupported=_ADELAIDET),
):
    register(_entry)
del _entry
