"""iGSM: synthetic grade-school math with a controllable number of reasoning steps.

Our own implementation of the generator of "Physics of Language Models" Part 2.1/2.2
(reference: facebookresearch/iGSM). A problem is built in three layers:

1. A *structure graph* (`StructureGraph`): layers of named items, e.g. Zoo → Enclosure →
   Animal → Bone, with edges between consecutive layers.
2. A *dependency graph* over *parameters* (`Param`): instance parameters ("each Riverside
   Zoo's Penguin Beach", one per edge), defined in the statement by a number or an
   expression of other parameters (`Definition`), and abstract parameters ("Riverside Zoo's
   Animal"), sums of products fixed by the structure. All arithmetic is mod 23.
3. English text (`Problem.text`) stating every instance parameter (needed ones and
   distractors) and asking for one, and a solution (`Problem.solution`) that defines each
   needed parameter once in topological order, showing the intermediate arithmetic::

       Define Hilltop Zoo's Lion Den as q; so q = 3 * (r + s) = 3 * (5 + 7) = 3 * 12 = 13.

Difficulty is ``op``, the number of arithmetic operations in the solution, and is exact:
``generate(GenConfig(op=7), seed=0).op == 7``. `GenConfig` also has the reference's
``max_edge`` (sentences in the statement) and ``perm_level`` (statement order) controls.

`check_solution` parses a solution written by anyone (a model, a corrupted copy) and checks
every step — name, dependencies, order, copied values, each line of arithmetic, the final
value — reporting the first failing step and why; `step_texts` splits any solution text
into its steps the same way. `retry_segments` makes the Part 2.2 retry
data ("Define <param> as [BACK]." before a correct step) in the three flavours retry,
retry_weak and retry_miss, with the wrong tokens marked for optional label masking.
`corrupt_solution` makes a solution with one known mistake (a wrong value, a copied operand,
a spurious dependency, a step out of order, a missing step, an unknown name) and says at
which step it first goes wrong.

Example:
    >>> from minirepro.tasks.igsm import GenConfig, generate, check_solution
    >>> p = generate(GenConfig(op=4, max_edge=8), seed=0)
    >>> p.op
    4
    >>> check_solution(p, p.solution).correct
    True
"""

from minirepro.tasks.igsm.checker import (
    BACK,
    CheckResult,
    StepCheck,
    check_solution,
    split_steps,
    step_texts,
)
from minirepro.tasks.igsm.corrupt import CORRUPTIONS, corrupt_solution
from minirepro.tasks.igsm.expr import Node, ParseError
from minirepro.tasks.igsm.generate import (
    GenConfig,
    GenerationError,
    generate,
    generate_many,
    solution_order,
)
from minirepro.tasks.igsm.graph import Definition, Param, StructureGraph
from minirepro.tasks.igsm.names import WORLDS, World
from minirepro.tasks.igsm.problem import Problem, Step
from minirepro.tasks.igsm.retry import (
    RETRY_KINDS,
    RetryKind,
    Segment,
    encode_segments,
    retry_segments,
    retry_solution,
    wrong_candidates,
)

__all__ = [
    "BACK",
    "CORRUPTIONS",
    "RETRY_KINDS",
    "WORLDS",
    "CheckResult",
    "Definition",
    "GenConfig",
    "GenerationError",
    "Node",
    "Param",
    "ParseError",
    "Problem",
    "RetryKind",
    "Segment",
    "Step",
    "StepCheck",
    "StructureGraph",
    "World",
    "check_solution",
    "corrupt_solution",
    "encode_segments",
    "generate",
    "generate_many",
    "retry_segments",
    "retry_solution",
    "solution_order",
    "split_steps",
    "step_texts",
    "wrong_candidates",
]
