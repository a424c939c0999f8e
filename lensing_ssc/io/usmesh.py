"""Reader of FastPM "usmesh" light cones (BigFile directories) - the only module that reads usmesh.

Layout (SCIENCE.md §1, /work/shared/data/fastpm_lightcone_small/README.txt)::

    usmesh/Header/     attrs only: BoxSize, NC, MassTable, OmegaM, HubbleParam, ParamFile, ...
    usmesh/HEALPIX/    ID (i8) = slice * npix + ipix_NEST, Aemit (f4), Mass (f4), Rmom (f4);
                       attrs healpix.{npix,nside,nslices,scheme}, aemitIndex.{edges,offset,size}, M0
    usmesh/1/          particles: Position (f4, 3) [Mpc/h], Aemit (f4), ID (i8), Velocity (f4, 3);
                       attrs M0, aemitIndex.{edges,offset,size}

Rows of slice i (scale factor in [edges[i], edges[i+1]]) are nominally
``aemitIndex.offset[i+1] : aemitIndex.offset[i+2]``; :meth:`UsmeshCatalog.iter_slice_chunks` uses that
range (plus an optional margin) only to narrow the read, and keeps exactly the rows whose slice id is i.
Pixel ids are NESTED although FastPM labels them "RING" (SCIENCE.md Decision 2). A slice split across
two light-cone events appears as two runs of rows with the same IDs: callers must sum (bincount).
"""
import logging
import math
import os
import re

import bigfile
import healpy as hp
import numpy as np

logger = logging.getLogger(__name__)

HEALPIX_DATASET = "HEALPIX"
PARTICLE_DATASET = "particles"
# FastPM writes the light-cone particles of species 1 (CDM) in block "1".
PARTICLE_BLOCK = "1"
HEADER_BLOCK = "Header"

_HEALPIX_COLUMNS = ("ID", "Mass")
_PARTICLE_COLUMNS = ("Position", "Aemit")
# One top-level entry of FastPM's ParamFile (the expanded Lua config, one tab-indented "key = value,"
# per line; tables span several lines and are not matched): group 1 a quoted string, group 2 a scalar.
_PARAMFILE_ENTRY = r'^\t{name}\s*=\s*(?:["\']([^"\'\n]*)["\']|([^\s,{{]+))\s*,?\s*$'
_SEED_IN_DIRNAME = re.compile(r"_s(\d+)")


class UsmeshError(ValueError):
    """A usmesh BigFile is missing something or is inconsistent (message names the path and item)."""


# what each attr read here holds (for error messages)
_EXPECTED_ATTRS = {
    "healpix.npix": "the number of HEALPix pixels, 12 nside^2",
    "healpix.nslices": "the number of scale-factor slices",
    "aemitIndex.edges": "the nslices + 1 scale-factor slice edges",
    "aemitIndex.offset": "the nslices + 3 row offsets of the slices",
    "BoxSize": "the box side in Mpc/h",
    "NC": "the number of particles per box side",
    "MassTable": "the particle mass per species, 1e10 Msun/h",
    "OmegaM": "the matter density parameter",
    "HubbleParam": "h",
}


def _unwrap_attr(value):
    """BigFile attr value -> str for character attrs, Python scalar for 1-element arrays, else array."""
    if isinstance(value, list):  # bigfile returns <S1/<a1 attrs as a list of 1-char strings
        return "".join(value).rstrip("\x00")
    array = np.asarray(value)
    if array.size == 1:
        return array.reshape(()).item()
    return array


class UsmeshCatalog:
    """One dataset of a FastPM usmesh light cone, read lazily with the ``bigfile`` package.

    Parameters
    ----------
    path : usmesh BigFile directory (the one holding ``Header/``, ``HEALPIX/``, ``1/``).
    dataset : "HEALPIX" (pre-pixelised rows, the production route) or "particles" (block ``1/``).
    nside_out : HEALPix nside of the particle route; default: the HEALPIX block's ``healpix.nside``.
        Ignored by the HEALPIX route (its nside comes from ``healpix.npix``).
    observer : observer position [Mpc/h] in the coordinates of ``Position`` (particle route only).
    """

    def __init__(self, path, dataset=HEALPIX_DATASET, nside_out=None, observer=(0.0, 0.0, 0.0)):
        if dataset not in (HEALPIX_DATASET, PARTICLE_DATASET):
            raise ValueError(f"dataset must be '{HEALPIX_DATASET}' or '{PARTICLE_DATASET}', got {dataset!r}")
        self.path = os.fspath(path)
        self.dataset = dataset
        self.block = HEALPIX_DATASET if dataset == HEALPIX_DATASET else PARTICLE_BLOCK
        observer = np.asarray(observer, dtype=np.float64)
        if observer.shape != (3,) or not np.all(np.isfinite(observer)):
            raise ValueError(f"observer must be 3 finite numbers [Mpc/h], got {observer!r}")
        self.observer = observer
        if nside_out is not None and (int(nside_out) != nside_out or nside_out < 1):
            raise ValueError(f"nside_out must be a positive integer, got {nside_out!r}")
        self._nside_out = None if nside_out is None else int(nside_out)
        if not os.path.isdir(self.path):
            raise UsmeshError(f"{self.path}: not a directory (expected a FastPM usmesh BigFile directory)")
        try:
            self._file = bigfile.File(self.path)
            top_blocks = set(self._file.blocks)
        except Exception as exc:  # bigfile raises its own Error/OSError types
            raise UsmeshError(f"{self.path}: cannot open as a BigFile ({exc})") from exc
        for needed in (HEADER_BLOCK, self.block):
            if needed not in top_blocks:
                raise UsmeshError(f"{self.path}: missing block '{needed}/' (found {sorted(top_blocks)}; "
                                  f"expected a FastPM usmesh with '{HEADER_BLOCK}' and '{self.block}')")
        self._columns = sorted(bigfile.File(os.path.join(self.path, self.block)).blocks)
        needed_columns = _HEALPIX_COLUMNS if dataset == HEALPIX_DATASET else _PARTICLE_COLUMNS
        for column in needed_columns:
            if column not in self._columns:
                raise UsmeshError(f"{self.path}: block '{self.block}/' has no column '{column}' "
                                  f"(found {self._columns}; expected {list(needed_columns)})")
        self._attrs = {}
        for block in (HEADER_BLOCK, self.block):
            attrset = self._file[block].attrs
            self._attrs.update({name: _unwrap_attr(attrset[name]) for name in attrset})
        scheme = self._attrs.get("healpix.scheme")
        if scheme is not None and scheme != "NEST":
            logger.debug("%s: healpix.scheme says %r; FastPM pixel ids are NESTED, read as NEST",
                         self.path, scheme)

    def __repr__(self):
        return f"UsmeshCatalog({self.path!r}, dataset={self.dataset!r})"

    # ---------------------------------------------------------------- metadata
    @property
    def attrs(self):
        """Header attrs merged with the dataset block attrs (block wins); scalars unwrapped, strings str."""
        return dict(self._attrs)

    @property
    def columns(self):
        """Column names of the dataset block, sorted."""
        return list(self._columns)

    def _attr(self, name, where=None):
        try:
            return self._attrs[name]
        except KeyError:
            where = where or f"'{HEADER_BLOCK}' or '{self.block}'"
            expected = _EXPECTED_ATTRS.get(name, "a FastPM usmesh attr")
            raise UsmeshError(f"{self.path}: missing attr '{name}' in block {where} "
                              f"(expected {expected})") from None

    def _scalar(self, name, kind, where=None):
        value = self._attr(name, where)
        if np.ndim(value) != 0:
            raise UsmeshError(f"{self.path}: attr '{name}' must be a single number, got shape {np.shape(value)}")
        return kind(value)

    @property
    def npix(self):
        """Number of HEALPix pixels of the pixel ids (HEALPIX: attr healpix.npix; particles: 12 nside_out^2)."""
        if self.dataset == PARTICLE_DATASET:
            if self._nside_out is not None:
                return 12 * self._nside_out ** 2
            header_nside = self._healpix_block_nside()
            if header_nside is None:
                raise UsmeshError(f"{self.path}: particle route needs nside_out (no HEALPIX block with "
                                  "attr 'healpix.nside' to default to)")
            return 12 * header_nside ** 2
        npix = self._scalar("healpix.npix", int, f"'{self.block}'")
        if npix < 12:
            raise UsmeshError(f"{self.path}: attr 'healpix.npix' = {npix}, expected 12 nside^2 with nside >= 1")
        return npix

    def _healpix_block_nside(self):
        if HEALPIX_DATASET not in self._file.blocks:
            return None
        attrs = self._file[HEALPIX_DATASET].attrs
        return int(_unwrap_attr(attrs["healpix.nside"])) if "healpix.nside" in attrs else None

    @property
    def nside(self):
        """HEALPix nside derived from npix; UsmeshError if npix != 12 nside^2."""
        npix = self.npix
        nside = math.isqrt(npix // 12)
        if 12 * nside * nside != npix or not hp.isnsideok(nside, nest=True):
            raise UsmeshError(f"{self.path}: attr 'healpix.npix' = {npix} is not 12 nside^2 with a "
                              "power-of-two nside (NEST pixel ids need one)")
        return nside

    @property
    def aemit_edges(self):
        """Scale-factor slice edges, float64 array of shape (nslices + 1,), strictly increasing."""
        edges = np.atleast_1d(np.asarray(self._attr("aemitIndex.edges", f"'{self.block}'"), dtype=np.float64))
        if edges.ndim != 1 or edges.size < 2:
            raise UsmeshError(f"{self.path}: attr 'aemitIndex.edges' must have >= 2 values, got {edges.size}")
        if not np.all(np.diff(edges) > 0):
            raise UsmeshError(f"{self.path}: attr 'aemitIndex.edges' is not strictly increasing")
        return edges

    @property
    def nslices(self):
        """Number of scale-factor slices (HEALPIX: attr healpix.nslices; particles: len(edges) - 1)."""
        if self.dataset == HEALPIX_DATASET:
            nslices = self._scalar("healpix.nslices", int, f"'{self.block}'")
            nedges = self.aemit_edges.size
            if nedges != nslices + 1:
                raise UsmeshError(f"{self.path}: attr 'aemitIndex.edges' has {nedges} values, expected "
                                  f"healpix.nslices + 1 = {nslices + 1}")
            return nslices
        return self.aemit_edges.size - 1

    @property
    def offsets(self):
        """aemitIndex.offset, int64 array (nslices + 3,): rows of slice i are offsets[i+1]:offsets[i+2]."""
        offsets = np.atleast_1d(np.asarray(self._attr("aemitIndex.offset", f"'{self.block}'"), dtype=np.int64))
        expected = self.nslices + 3
        if offsets.shape != (expected,):
            raise UsmeshError(f"{self.path}: attr 'aemitIndex.offset' has {offsets.size} values, expected "
                              f"nslices + 3 = {expected}")
        if offsets[0] != 0 or np.any(np.diff(offsets) < 0):
            raise UsmeshError(f"{self.path}: attr 'aemitIndex.offset' must start at 0 and be non-decreasing")
        if offsets[-1] != self.nrows:
            raise UsmeshError(f"{self.path}: attr 'aemitIndex.offset' ends at {offsets[-1]}, expected the "
                              f"{self.nrows} rows of block '{self.block}/'")
        return offsets

    @property
    def box_size(self):
        """Simulation box side L [Mpc/h] (Header BoxSize)."""
        return self._scalar("BoxSize", float)

    @property
    def nc(self):
        """Particles per box side (Header NC)."""
        return self._scalar("NC", int)

    @property
    def particle_mass(self):
        """Mass per particle [1e10 Msun/h]: the particle block's M0, else Header MassTable[1]."""
        if self.dataset == PARTICLE_DATASET and self._attrs.get("M0", 0.0) > 0.0:
            return float(self._attrs["M0"])
        table = np.atleast_1d(self._attr("MassTable"))
        if table.size < 2 or not table[1] > 0.0:
            raise UsmeshError(f"{self.path}: attr 'MassTable' must hold the CDM particle mass > 0 at index 1")
        return float(table[1])

    @property
    def omega_m(self):
        """Matter density parameter (Header OmegaM)."""
        return self._scalar("OmegaM", float)

    @property
    def hubble_param(self):
        """Dimensionless Hubble parameter h (Header HubbleParam)."""
        return self._scalar("HubbleParam", float)

    def paramfile_value(self, name):
        """The value of the top-level entry ``name`` of the Header attr ParamFile (FastPM's expanded Lua
        config) as a str (quotes removed), or None when there is no ParamFile or no such scalar entry."""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(name)):
            raise ValueError(f"name must be a Lua identifier, got {name!r}")
        match = re.search(_PARAMFILE_ENTRY.format(name=name), str(self._attrs.get("ParamFile", "")), re.MULTILINE)
        if match is None:
            return None
        return match.group(1) if match.group(1) is not None else match.group(2)

    def paramfile_number(self, name):
        """:meth:`paramfile_value` as a float, or None when absent or not a number."""
        value = self.paramfile_value(name)
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    @property
    def seed(self):
        """Simulation seed: attr 'seed', else 'random_seed = N' in ParamFile, else '_s(\\d+)' in the path, else None."""
        if "seed" in self._attrs:
            return int(self._attrs["seed"])
        random_seed = self.paramfile_value("random_seed")
        if random_seed is not None and random_seed.isdigit():
            return int(random_seed)
        for part in reversed(os.path.abspath(self.path).split(os.sep)):
            match = _SEED_IN_DIRNAME.search(part)
            if match:
                return int(match.group(1))
        return None

    @property
    def nrows(self):
        """Number of rows of the dataset block (length of its first required column)."""
        column = _HEALPIX_COLUMNS[0] if self.dataset == HEALPIX_DATASET else _PARTICLE_COLUMNS[0]
        return int(self._column(column).size)

    def _column(self, name):
        return self._file[f"{self.block}/{name}"]

    def validate(self):
        """List of problems with the metadata (empty list = usable). Never raises for a bad file."""
        checks = ("npix", "nside", "nslices", "aemit_edges", "offsets", "box_size", "nc",
                  "particle_mass", "omega_m", "hubble_param")
        problems = []
        required = _HEALPIX_COLUMNS if self.dataset == HEALPIX_DATASET else _PARTICLE_COLUMNS
        sizes = {name: int(self._column(name).size) for name in required}
        if len(set(sizes.values())) > 1:
            problems.append(f"{self.path}: columns of block '{self.block}/' differ in length: {sizes}")
        for name in checks:
            try:
                getattr(self, name)
            except UsmeshError as exc:
                message = str(exc)
                if message not in problems:
                    problems.append(message)
        if self.dataset == PARTICLE_DATASET and not any("aemitIndex.edges" in p for p in problems):
            if not self._edges_are_fastpm_linspace():
                problems.append(f"{self.path}: attr 'aemitIndex.edges' is not linspace(0, 1, nslices + 1); "
                                "the particle slice rule (Aemit * nslices in float32) needs it")
        return problems

    def _edges_are_fastpm_linspace(self):
        edges = self.aemit_edges
        return bool(np.allclose(edges, np.linspace(0.0, 1.0, edges.size), rtol=0.0, atol=1e-12))

    # ------------------------------------------------------------- row ranges
    def rows_per_slice(self):
        """Nominal rows of each slice from aemitIndex.offset, int64 array (nslices,), for load balancing."""
        offsets = self.offsets
        return offsets[2:self.nslices + 2] - offsets[1:self.nslices + 1]

    def nonempty_slices(self):
        """Indices of slices with at least one nominal row, int array."""
        return np.flatnonzero(self.rows_per_slice() > 0)

    def slice_row_range(self, i, margin=0):
        """(start, stop) rows of slice i: offsets[i+1]:offsets[i+2] widened by margin rows, clipped to [0, nrows]."""
        nslices = self.nslices
        if int(i) != i or not 0 <= i < nslices:
            raise ValueError(f"slice index i must be an integer in [0, {nslices}), got {i!r}")
        if int(margin) != margin or margin < 0:
            raise ValueError(f"margin must be an integer >= 0, got {margin!r}")
        offsets = self.offsets
        start, stop = int(offsets[int(i) + 1]), int(offsets[int(i) + 2])
        return max(0, start - int(margin)), min(self.nrows, stop + int(margin))

    # --------------------------------------------------------------- streaming
    def _slice_ids(self, rows):
        """Slice id of each row of a chunk (dict of column arrays), int64."""
        if self.dataset == HEALPIX_DATASET:
            return rows["ID"].astype(np.int64) // self.npix
        # FastPM's C code multiplies in float32: float64 floor moves particles with Aemit = k/nslices.
        return (rows["Aemit"] * np.float32(self.nslices)).astype(np.int64)

    def _read_rows(self, start, stop, names=None):
        if names is None:
            names = _HEALPIX_COLUMNS if self.dataset == HEALPIX_DATASET else _PARTICLE_COLUMNS
        return {name: self._column(name)[start:stop] for name in names}

    def _pixels_and_masses(self, rows, keep):
        if self.dataset == HEALPIX_DATASET:
            ids = rows["ID"][keep].astype(np.int64)
            return ids % self.npix, rows["Mass"][keep].astype(np.float64)
        relative = rows["Position"][keep].astype(np.float64) - self.observer
        ipix = hp.vec2pix(self.nside, relative[:, 0], relative[:, 1], relative[:, 2], nest=True)
        return ipix.astype(np.int64), np.full(ipix.size, self.particle_mass)

    def iter_slice_chunks(self, i, chunk_size, margin=0):
        """Yield (ipix_nest int64 (n,), mass float64 (n,) [1e10 Msun/h]) for the rows of slice i.

        Streams rows [start - margin, stop + margin) of :meth:`slice_row_range` in pieces of at most
        chunk_size rows and keeps exactly the rows whose slice id equals i (HEALPIX: ID // npix;
        particles: int(Aemit * float32(nslices)) in float32). Duplicated pixel ids (a slice split across
        light-cone events) are yielded as they are: sum them (np.bincount). Raises UsmeshError if the
        row just outside the range still belongs to slice i (the offsets are wrong: widen margin).
        """
        if int(chunk_size) != chunk_size or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        if self.dataset == PARTICLE_DATASET and not self._edges_are_fastpm_linspace():
            raise UsmeshError(f"{self.path}: attr 'aemitIndex.edges' is not linspace(0, 1, nslices + 1); "
                              "cannot assign particle slices")
        start, stop = self.slice_row_range(i, margin)
        self._check_range_boundaries(i, start, stop)
        for chunk_start in range(start, stop, int(chunk_size)):
            rows = self._read_rows(chunk_start, min(stop, chunk_start + int(chunk_size)))
            keep = self._slice_ids(rows) == i
            if np.any(keep):
                yield self._pixels_and_masses(rows, keep)

    def sorted_id_runs(self, i, chunk_size, margin=0, max_runs=8):
        """HEALPIX rows around slice i cut into runs of non-decreasing ID: a list of (start, stop) row ranges
        covering :meth:`slice_row_range` (i, margin) in order, or None when there are more than ``max_runs``
        (rows in no ID order). FastPM writes each light-cone event's rows sorted by ID, so a slice holds
        one run per event it straddles. Reads the ID column once, ``chunk_size`` rows at a time."""
        if self.dataset != HEALPIX_DATASET:
            raise ValueError("sorted_id_runs: only the HEALPIX dataset has rows sorted by ID")
        start, stop = self.slice_row_range(i, margin)
        self._check_range_boundaries(i, start, stop)
        column = self._column("ID")
        run_starts, previous = [start], None
        for chunk_start in range(start, stop, int(chunk_size)):
            ids = column[chunk_start:min(stop, chunk_start + int(chunk_size))]
            if previous is not None and ids[0] < previous:
                run_starts.append(chunk_start)
            run_starts.extend((np.flatnonzero(ids[1:] < ids[:-1]) + 1 + chunk_start).tolist())
            if len(run_starts) > max_runs:
                return None
            previous = ids[-1]
        bounds = run_starts + [stop]
        return list(zip(bounds[:-1], bounds[1:]))

    def iter_run_pixels(self, i, run, chunk_size):
        """Yield (ipix_nest int64 (n,), mass float32 (n,) [1e10 Msun/h]) of the rows of slice i in one run
        (start, stop) of :meth:`sorted_id_runs`, at most ``chunk_size`` rows read at a time; the pixels
        never decrease. In a sorted run the rows of slice i are the contiguous ones with ID in
        [i npix, (i + 1) npix): only their Mass is read, and the read stops past them."""
        first, last = int(i) * self.npix, (int(i) + 1) * self.npix
        ids_column, mass_column = self._column("ID"), self._column("Mass")
        start, stop = run
        for chunk_start in range(start, stop, int(chunk_size)):
            ids = np.asarray(ids_column[chunk_start:min(stop, chunk_start + int(chunk_size))], dtype=np.int64)
            low, high = np.searchsorted(ids, [first, last])
            if high > low:
                ipix = ids[low:high]
                ipix -= first
                yield ipix, mass_column[chunk_start + low:chunk_start + high]
            if high < ids.size:  # rows of later slices: the run holds no more of slice i
                return

    def _check_range_boundaries(self, i, start, stop):
        outside = [row for row in (start - 1, stop) if 0 <= row < self.nrows]
        for row in outside:
            slice_column = "ID" if self.dataset == HEALPIX_DATASET else "Aemit"
            if self._slice_ids(self._read_rows(row, row + 1, (slice_column,)))[0] == i:
                raise UsmeshError(f"{self.path}: row {row} just outside rows [{start}, {stop}) of slice {i} "
                                  "(from attr 'aemitIndex.offset' and the margin) still belongs to slice "
                                  f"{i}; the offsets are inconsistent with the data, increase margin")
