"""Binning of pixel-sorted weighted rows into a HEALPix map one pixel block at a time (pure numpy).

FastPM writes the HEALPIX rows of each light-cone event sorted by ID = slice * npix + NEST pixel, so the
rows of one slice form one sorted run per event that holds the slice (one or two). Summing k such runs
needs only one pixel block of the map and one piece of rows per run at a time: each run is consumed in
increasing pixel order, up to the end of the current block, while the block is filled and handed out.
This is what keeps a preprocessing rank's memory independent of nside (the whole-map alternative holds
8 B per pixel, 6 GiB at nside 8192).
"""
from typing import Iterable, Iterator, List, Optional, Tuple

import numpy as np

Piece = Tuple[np.ndarray, np.ndarray]


class SortedRun:
    """Cursor over one run: an iterator of pieces ``(ipix int64 (n,), weights (n,))`` whose pixels never
    decrease, within a piece and from one piece to the next (the caller guarantees it within pieces:
    :meth:`lensing_ssc.io.usmesh.UsmeshCatalog.sorted_id_runs` splits the rows where the ID decreases;
    the piece boundaries are checked here, ValueError)."""

    def __init__(self, pieces: Iterable[Piece]):
        self._pieces: Iterator[Piece] = iter(pieces)
        self._pending: Optional[Piece] = None
        self._last_pixel = -1

    def _next_piece(self) -> Optional[Piece]:
        for ipix, weights in self._pieces:
            if ipix.size:
                if ipix[0] < self._last_pixel:
                    raise ValueError(f"pixels of a sorted run decrease between pieces ({self._last_pixel} then "
                                     f"{ipix[0]})")
                self._last_pixel = int(ipix[-1])
                return ipix, weights
        return None

    def take_below(self, stop: int) -> Iterator[Piece]:
        """Yield the run's next rows with pixel < ``stop``, as pieces; the rows beyond stay pending."""
        while True:
            if self._pending is None:
                self._pending = self._next_piece()
                if self._pending is None:
                    return
            ipix, weights = self._pending
            cut = int(np.searchsorted(ipix, stop))
            if cut:
                yield ipix[:cut], weights[:cut]
            if cut < ipix.size:
                self._pending = (ipix[cut:], weights[cut:])
                return
            self._pending = None


def merged_mass_blocks(runs: List[Iterable[Piece]], npix: int, block_pixels: int) -> Iterator[np.ndarray]:
    """The float64 map ``bincount(all ipix, weights=all weights, minlength=npix)`` of several sorted runs,
    as consecutive blocks: pixels ``[k block_pixels, (k + 1) block_pixels)``, shape (block_pixels,), the last
    one shorter. Each pixel sums its rows run by run in row order (with one row per pixel and run, the bits
    of one bincount over all rows). Pixels must lie in [0, npix); each block is a new array.

    Memory: one block (8 B x block_pixels), one pending piece per run and a bincount over the pixel span of
    one piece within a block.
    """
    if block_pixels < 1 or npix < 0:
        raise ValueError(f"block_pixels must be >= 1 and npix >= 0, got {block_pixels} and {npix}")
    cursors = [SortedRun(run) for run in runs]
    for start in range(0, npix, block_pixels):
        stop = min(npix, start + block_pixels)
        block = None
        for cursor in cursors:
            for ipix, weights in cursor.take_below(stop):
                low, high = int(ipix[0]) - start, int(ipix[-1]) - start + 1
                if low < 0 or high <= low:  # a cheap guard; sortedness within a piece is the caller's
                    raise ValueError(f"pixels {int(ipix[0])}..{int(ipix[-1])} met in block [{start}, {stop}): "
                                     "the run is not sorted")
                if block is None:  # the block's first rows: their bincount is the block (0 + x = x)
                    block = np.bincount(ipix - start, weights=weights, minlength=stop - start).astype(np.float64,
                                                                                                      copy=False)
                else:
                    block[low:high] += np.bincount(ipix - (start + low), weights=weights, minlength=high - low)
        yield np.zeros(stop - start) if block is None else block
    for cursor in cursors:
        leftover = next(cursor.take_below(np.iinfo(np.int64).max), None)
        if leftover is not None:
            raise ValueError(f"pixel {int(leftover[0][0])} is beyond the map's {npix} pixels")
