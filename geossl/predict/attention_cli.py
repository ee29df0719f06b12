"""``geossl attention``: the DINO self-attention maps of a tile, per head, over its RGB rendering -> PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

from geossl.data.raster import parse_band_indices, raster_env
from geossl.devices import pick_device
from geossl.io import check_outputs
from geossl.models.encoder import load_encoder
from geossl.predict.attention import attention_maps, rgb_indices, write_attention_png
from geossl.predict.common import ensure_out_dir
from geossl.predict.tiles import image_header, image_inputs, read_tile

MAX_SIDE = 1024  # attention is per tile; a whole scene would be a quadratic number of token pairs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", required=True, help="encoder folder (or a probe's model folder)")
    parser.add_argument("--input", required=True, help="one tile: GeoTIFF, JPEG or PNG")
    parser.add_argument("--out", required=True, help="output .png")
    parser.add_argument("--bands", default=None, help="1-based bands of the file to feed the encoder, e.g. 1,2,3")
    parser.add_argument("--rgb-bands", default=None,
                        help="1-based bands (of those fed to the encoder) to render as RGB (default: first three)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overwrite", action="store_true")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {out}: expected a .png file name")
    ensure_out_dir(out.parent)
    check_outputs([out], args.overwrite)
    uris = image_inputs(args.input)
    if len(uris) != 1:
        raise ValueError(f"--input {args.input}: matches {len(uris)} files; attention maps are drawn for one tile")
    encoder = load_encoder(Path(args.encoder), device=pick_device(args.device))
    with raster_env(uris):
        width, height, _ = image_header(uris[0])
        if max(width, height) > MAX_SIDE:
            raise ValueError(f"{uris[0]}: {width}x{height} px; attention maps are per tile (at most {MAX_SIDE} px a side)")
        tile = read_tile(uris[0], encoder.meta, parse_band_indices(args.bands, "--bands"))
    maps = attention_maps(encoder, tile.image)[0]
    rgb = rgb_indices(tile.image.shape[0], parse_band_indices(args.rgb_bands, "--rgb-bands"))
    meta = encoder.meta
    low = [meta.p2[i] for i in rgb] if meta.p2 and meta.p98 else None
    high = [meta.p98[i] for i in rgb] if meta.p2 and meta.p98 else None
    p = meta.patch_size
    image = tile.image[:, : maps.shape[1] * p, : maps.shape[2] * p]
    write_attention_png(out, image, maps, rgb, low, high,
                        title=f"{Path(uris[0]).name}: last-block CLS attention, {maps.shape[0]} heads")
    print(f"attention: {maps.shape[0]} heads on a {maps.shape[1]}x{maps.shape[2]} patch grid -> {out}")
    return 0
