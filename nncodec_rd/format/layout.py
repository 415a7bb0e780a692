"""Quantities the spec derives from the header: tensor geometry, chunk extents, canonical layout.

These are the formulas of spec §5.1 and §4.7, written once. Readers and writers both use them;
they are part of the format, not helpers of either side.
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import PAYLOAD_ALIGNMENT_BYTES, PREAMBLE_SIZE_BYTES


def align_up(offset: int, alignment: int = PAYLOAD_ALIGNMENT_BYTES) -> int:
    """The smallest multiple of ``alignment`` that is >= ``offset`` (spec §4.7)."""
    return -(-offset // alignment) * alignment


def element_count(shape) -> int:
    """Number of elements of a tensor of ``shape`` (1 for rank 0), exact integer arithmetic."""
    count = 1
    for dimension in shape:
        count *= int(dimension)
    return count


@dataclass(frozen=True)
class RowGeometry:
    """spec §5.1: a tensor seen as a matrix of ``rows`` x ``row_length`` in row-major order."""

    rows: int
    row_length: int

    @classmethod
    def of_shape(cls, shape) -> "RowGeometry":
        """Rows are the first dimension (1 for a 0-d tensor); a row holds all the remaining ones."""
        shape = [int(d) for d in shape]
        if not shape:
            return cls(1, 1)
        return cls(shape[0], element_count(shape[1:]))


@dataclass(frozen=True)
class ChunkExtent:
    """spec §7.1: the rows a chunk covers and the symbols it codes."""

    first_row: int
    row_count: int
    first_symbol: int
    symbol_count: int


def chunk_count_for(rows: int, coded_row_length: int, rows_per_chunk: int) -> int:
    """spec §7.1: ceil(rows / rows_per_chunk), or 0 when the tensor codes no symbol."""
    if rows * coded_row_length == 0:
        return 0
    return -(-rows // rows_per_chunk)


def chunk_extents(rows: int, coded_row_length: int, rows_per_chunk: int) -> list[ChunkExtent]:
    """The extent of every chunk of a rANS tensor, in order."""
    extents = []
    for index in range(chunk_count_for(rows, coded_row_length, rows_per_chunk)):
        first_row = index * rows_per_chunk
        row_count = min(rows_per_chunk, rows - first_row)
        extents.append(ChunkExtent(first_row, row_count, first_row * coded_row_length,
                                   row_count * coded_row_length))
    return extents


def chunk_extent(rows: int, coded_row_length: int, rows_per_chunk: int, index: int) -> ChunkExtent:
    """The extent of chunk ``index`` (one of :func:`chunk_extents`, without listing them all)."""
    first_row = index * rows_per_chunk
    row_count = min(rows_per_chunk, rows - first_row)
    return ChunkExtent(first_row, row_count, first_row * coded_row_length,
                       row_count * coded_row_length)


def chunks_covering(rows: int, coded_row_length: int, rows_per_chunk: int, start_row: int,
                    stop_row: int) -> range:
    """The indices of the chunks holding rows ``start_row`` ... ``stop_row - 1``."""
    count = chunk_count_for(rows, coded_row_length, rows_per_chunk)
    if stop_row <= start_row:
        return range(0)
    return range(min(count, start_row // rows_per_chunk),
                 min(count, -(-stop_row // rows_per_chunk)))


def group_count_for(rows: int, rows_per_group: int) -> int:
    """spec §6.1: number of step groups of a uniform grid."""
    if rows_per_group == 0:
        return 1
    return max(1, -(-rows // rows_per_group))


def payload_area_start(header_size: int) -> int:
    """spec §4.7: the first payload starts at the first aligned offset after the header."""
    return align_up(PREAMBLE_SIZE_BYTES + header_size)


def canonical_offsets(header_size: int, payload_sizes) -> tuple[list[int], int]:
    """spec §4.7: offsets of payloads of the given sizes, in order, and the file size they imply.

    Each payload starts at the first multiple of 64 at or after the end of the previous one (the
    first at or after the end of the header); the file ends where the last payload ends.
    """
    offsets = []
    end = PREAMBLE_SIZE_BYTES + header_size
    for size in payload_sizes:
        offset = align_up(end)
        offsets.append(offset)
        end = offset + int(size)
    return offsets, end
