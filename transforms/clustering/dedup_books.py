"""The dedup job's books (pipelines/dedup.py): rows read per input = rows written to OUT3 + rows
replaced by a newer version of their key, and each input's rows read = the rows of the table its
check found before the run (table_record.checked_table); unbalanced, OUT3 keeps its previous table.
"""

from transforms.errors import BooksUnbalanced
from transforms.io.table_record import roll_back

__all__ = ["check_dedup_books", "dedup_books"]


def dedup_books(rows_in, written, replaced, inputs, tables=None):
    """Rows read per input against rows written + rows replaced by a newer version of their key,
    and against the rows of each input's table as checked before the run.

    Args:
        rows_in: [(input index, rows read)] (an index may come several times: summed).
        written: CopyTables' counts, [{"path", "rows"}], one per file written.
        replaced: rows replaced.
        inputs: the --input values, in order.
        tables: which table of each input was read (table_record.checked_table), in order; None: unknown.
    Returns:
        {"inputs": [{"path", "rows", "table"?}], "rows_in", "rows_out", "replaced", "balanced"}.
    """
    per_input = {}
    for index, rows in rows_in:
        per_input[index] = per_input.get(index, 0) + rows
    total_in = sum(per_input.values())
    rows_out = sum(part["rows"] for part in written)
    read = [{"path": path, "rows": per_input.get(i, 0)} for i, path in enumerate(inputs)]
    for entry, table in zip(read, tables or [], strict=False):
        entry["table"] = table
    return {
        "inputs": read,
        "rows_in": total_in,
        "rows_out": rows_out,
        "replaced": replaced,
        # why: an input read short (a file lost between the check and the read) balanced as fewer rows in
        "balanced": total_in == rows_out + replaced
        and all(e["rows"] == e["table"]["rows"] for e in read if "table" in e),
    }


def check_dedup_books(_, books, written=(), previous=(), output="OUT3"):
    """Raises BooksUnbalanced unless rows in = rows out + replaced, once this run's table files
    (`written`) are removed again: OUT3/images keeps the `previous` files, whole."""
    if not books["balanced"]:
        roll_back(written, keep=previous)
        raise BooksUnbalanced(
            f"the books do not balance: {books['rows_in']} rows read from"
            f" {', '.join(i['path'] for i in books['inputs'])}, {books['rows_out']} rows written"
            f" to {output} + {books['replaced']} replaced"
            + "".join(
                f"; {i['path']}: {i['rows']} rows read of its table's {i['table']['rows']}"
                for i in books["inputs"]
                if "table" in i and i["rows"] != i["table"]["rows"]
            )
            + f"; {output} keeps its previous table"
        )
    return books
