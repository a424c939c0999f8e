"""Regenerate the small FastPM usmesh fixtures of tests/data from the real runs (see README.md here).

    .venv/bin/python tests/data/make_fastpm_fixtures.py /work/shared/data/fastpm_lightcone_small

Writes
  fastpm_usmesh_structure.json   block/column/attr structure (dtype, count) of both real runs
  fastpm_fullsky_subset/usmesh   fullsky HEALPIX rows of the 12 nside-32 pixels inside the 10-deg cone,
                                 all slices, original light-cone event split kept (duplicated IDs)
  fastpm_cone10_subset/usmesh    cone10 HEALPIX rows of (a) the 4 nside-256 pixels around the particle
                                 with Aemit = float32(0.69) and (b) the nside-256 children of those 12
                                 pixels in the event-straddling slices 44, 50, 59; plus the particles
                                 (Position, Aemit, ID) of (a)
  fastpm_cone10_chain/usmesh     cone10 reduced for whole-chain tests (2.6 MB): every HEALPIX row (all
                                 slices, so the footprint is the real one) and all columns of the particles
                                 of slices >= CHAIN_FIRST_PARTICLE_SLICE (z < 0.5), Header attrs verbatim
                                 incl. ParamFile
Rows, Header attrs and the other block attrs are copied verbatim (except the 81 kB ParamFile, kept only
in the cone10 subset); aemitIndex.offset/size are recomputed for the kept rows.
"""
import json
import os
import sys

import bigfile
import healpy as hp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CONE_PIXELS_NSIDE32 = [1021, 1022, 1023, 2045, 2046, 2047, 3069, 3070, 3071, 4093, 4094, 4095]
STRADDLING_SLICES = [44, 50, 59]
# fastpm_cone10_chain keeps the particles of the slices a zs = 0.5 kappa map uses (z < 0.5: 67..98).
CHAIN_FIRST_PARTICLE_SLICE = 67


def parse_attr_file(path):
    """attr-v2 text -> {name: [dtype, count]}."""
    attrs = {}
    with open(path) as handle:
        for line in handle:
            name, dtype, count = line.split()[:3]
            attrs[name] = [dtype, int(count)]
    return attrs


def parse_block_header(path):
    """BigFile block header -> (dtype, nmemb, rows per physical file)."""
    with open(path) as handle:
        lines = handle.read().splitlines()
    dtype = lines[0].split(":")[1].strip()
    nmemb = int(lines[1].split(":")[1])
    nfile = int(lines[2].split(":")[1])
    rows = [int(line.split(":")[1]) for line in lines[3:3 + nfile]]
    return dtype, nmemb, rows


def structure_of(usmesh):
    blocks = {}
    for block in sorted(os.listdir(usmesh)):
        block_dir = os.path.join(usmesh, block)
        dtype, nmemb, rows = parse_block_header(os.path.join(block_dir, "header"))
        entry = {"dtype": dtype, "nmemb": nmemb, "nfile": len(rows),
                 "attrs": parse_attr_file(os.path.join(block_dir, "attr-v2")), "columns": {}}
        for column in sorted(os.listdir(block_dir)):
            column_dir = os.path.join(block_dir, column)
            if os.path.isdir(column_dir):
                cdtype, cnmemb, crows = parse_block_header(os.path.join(column_dir, "header"))
                entry["columns"][column] = {"dtype": cdtype, "nmemb": cnmemb, "nfile": len(crows),
                                            "nrows": sum(crows)}
        blocks[block] = entry
    return blocks


def copy_attrs(source_attrs, target_attrs, override=None, drop=()):
    override = override or {}
    for name in source_attrs:
        if name in drop:
            continue
        value = override.get(name, source_attrs[name])
        if isinstance(value, list):  # bigfile character arrays
            value = np.array(value, dtype="S1")
        target_attrs[name] = value


def aemit_index(slice_ids, nslices):
    size = np.bincount(np.asarray(slice_ids) + 1, minlength=nslices + 2).astype(np.int64)
    return {"aemitIndex.size": size, "aemitIndex.offset": np.concatenate([[0], np.cumsum(size)])}


def write_subset(source, target, blocks, drop_header_attrs=()):
    """blocks: {name: (keep mask, slice ids of kept rows, rows per event, columns)}."""
    src = bigfile.File(source)
    out = bigfile.File(target, create=True)
    header = out.create("Header", dtype=np.dtype(("i8", (0,))), size=0, Nfile=1)
    copy_attrs(src["Header"].attrs, header.attrs, drop=drop_header_attrs)
    header.close()
    for name, (keep, slices, event_rows, columns) in blocks.items():
        nslices = src[name].attrs["aemitIndex.edges"].size - 1
        group = out.create(name, dtype=np.dtype(("i8", (0,))), size=0, Nfile=0)
        copy_attrs(src[name].attrs, group.attrs, aemit_index(slices, nslices))
        group.close()
        bounds = np.concatenate([[0], np.cumsum(event_rows)])
        for column in columns:
            data = src[f"{name}/{column}"][:]
            block = out.create(f"{name}/{column}", dtype=np.dtype((data.dtype, data.shape[1:])),
                               size=0, Nfile=1)
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                part = data[lo:hi][keep[lo:hi]]
                if part.size:
                    block.append(part, Nfile=1)
            block.close()


def main(shared):
    structure = {run: structure_of(os.path.join(shared, run, "usmesh")) for run in ("fullsky", "cone10")}
    with open(os.path.join(HERE, "fastpm_usmesh_structure.json"), "w") as handle:
        json.dump(structure, handle, indent=1, sort_keys=True)

    fullsky = os.path.join(shared, "fullsky", "usmesh")
    f = bigfile.File(fullsky)
    npix = 12 * 32 ** 2
    ids = f["HEALPIX/ID"][:]
    keep = np.isin(ids % npix, CONE_PIXELS_NSIDE32)
    rows = parse_block_header(os.path.join(fullsky, "HEALPIX", "ID", "header"))[2]
    write_subset(fullsky, os.path.join(HERE, "fastpm_fullsky_subset", "usmesh"),
                 {"HEALPIX": (keep, ids[keep] // npix, rows, ["ID", "Aemit", "Mass", "Rmom"])},
                 drop_header_attrs=("ParamFile",))

    cone10 = os.path.join(shared, "cone10", "usmesh")
    f = bigfile.File(cone10)
    nside = 256
    npix = 12 * nside ** 2
    aemit = f["1/Aemit"][:]
    position = f["1/Position"][:].astype("f8")
    ppix = hp.vec2pix(nside, position[:, 0], position[:, 1], position[:, 2], nest=True)
    float32_slice = (aemit * np.float32(100)).astype(int)
    special = np.flatnonzero(float32_slice != np.floor(aemit.astype("f8") * 100).astype(int))
    particle_pixels = np.unique(ppix[special] // 4)[:, None] * 4 + np.arange(4)
    keep_particles = np.isin(ppix, particle_pixels)
    ids = f["HEALPIX/ID"][:]
    hpix, hslice = ids % npix, ids // npix
    keep_rows = np.isin(hpix, particle_pixels) | (
        np.isin(hpix // 64, CONE_PIXELS_NSIDE32) & np.isin(hslice, STRADDLING_SLICES))
    write_subset(cone10, os.path.join(HERE, "fastpm_cone10_subset", "usmesh"), {
        "HEALPIX": (keep_rows, hslice[keep_rows],
                    parse_block_header(os.path.join(cone10, "HEALPIX", "ID", "header"))[2],
                    ["ID", "Aemit", "Mass", "Rmom"]),
        "1": (keep_particles, float32_slice[keep_particles],
              parse_block_header(os.path.join(cone10, "1", "ID", "header"))[2], ["Position", "Aemit", "ID"]),
    })


def write_cone10_chain(shared):
    """fastpm_cone10_chain/usmesh: all cone10 HEALPIX rows, particles of slices >= CHAIN_FIRST_PARTICLE_SLICE."""
    cone10 = os.path.join(shared, "cone10", "usmesh")
    f = bigfile.File(cone10)
    npix = int(f["HEALPIX"].attrs["healpix.npix"][0])
    hslice = f["HEALPIX/ID"][:] // npix
    pslice = (f["1/Aemit"][:] * np.float32(100)).astype(int)  # FastPM's float32 slice rule
    keep_particles = pslice >= CHAIN_FIRST_PARTICLE_SLICE
    write_subset(cone10, os.path.join(HERE, "fastpm_cone10_chain", "usmesh"), {
        "HEALPIX": (np.ones(hslice.size, dtype=bool), hslice,
                    parse_block_header(os.path.join(cone10, "HEALPIX", "ID", "header"))[2],
                    ["ID", "Aemit", "Mass", "Rmom"]),
        "1": (keep_particles, pslice[keep_particles], parse_block_header(os.path.join(cone10, "1", "ID", "header"))[2],
              ["Position", "Velocity", "Aemit", "ID"]),
    })


if __name__ == "__main__":
    shared_data = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/fastpm_lightcone_small"
    main(shared_data)
    write_cone10_chain(shared_data)
