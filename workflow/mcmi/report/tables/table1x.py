"""Table 1x (beyond the paper): Table 1 laid out again for MIMKD and ITRD.

The teacher rows and the student baseline are the paper's (same teachers); the method rows' published
numbers are the MLL-teacher numbers of each method's own paper/README (``table1x.csv``). ITRD's README
used RepDistiller's teachers (the paper's); MIMKD's paper used teachers of its own (resnet56 72.31,
resnet110 73.82, wrn_40_2 75.31, vgg13 74.62), which the caption says.
"""

from __future__ import annotations

from mcmi.report.spec import TableSpec
from mcmi.report.tables.table1 import build_table1
from mcmi.report.tables.teacher_student import teacher_student_inputs, teacher_student_layout

TABLE = TableSpec(
    id="1x",
    title="Table 1x (beyond the paper)",
    caption="CIFAR-100 student top-1 accuracy (%) of MIMKD and ITRD with MLL vs MCMI teachers; paper = the "
            "MLL-teacher number of each method's own paper/README. MIMKD's paper numbers were obtained with "
            "the MIMKD authors' own teachers (resnet56 72.31, resnet110 73.82, wrn_40_2 75.31, vgg13 74.62), "
            "not the teachers of the teacher rows.",
    paper_files=("table1x.csv", "table1_teachers.csv", "table1_students.csv", "table1.csv"),
    paper_citation="table1x.csv (each method's own paper/README, see SOURCE.md), table1_teachers.csv, "
                   "table1_students.csv",
    paper_dataset="cifar100",
    inputs=lambda w, exp: teacher_student_inputs(w, exp, with_baseline=True),
    build=lambda records, paper_dir: build_table1(records, paper_dir, students_csv="table1x.csv"),
    layout=lambda df: teacher_student_layout(df, sections=True),
)
