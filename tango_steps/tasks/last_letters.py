"""The paper's small-scale study task: concatenate the last letters of N words (docs/method.md §8).

``Concatenate the last letters of: apple banana cherry`` has one step per word, each naming the
word, its last letter and the running concatenation: ``<step>apple -> e -> e</step>
<step>banana -> a -> ea</step><step>cherry -> y -> eay</step>``, answer ``eay``. The paper trains
on 2-10 words and evaluates on 2-12 (length generalisation).

Wrong step (exact): step k is right iff it reads ``w -> l -> s`` (spaces optional) with ``w`` the
(k+1)-th word, ``l`` its last letter and ``s`` the last letters of the first k+1 words.
"""

from __future__ import annotations

import random
import re

from tango_steps.tasks.base import Problem, Task, problem_id

_STEP = re.compile(r"^\s*([A-Za-z]+)\s*->\s*([A-Za-z])\s*->\s*([A-Za-z]+)\s*$")

# Common English words, 3-8 letters, lower case (embedded: no download).
WORDS = """
able acid aged also area army away baby back ball band bank base bath bear beat been beer bell belt best bill bird
blow blue boat body bomb bond bone book boom born boss both bowl bulk burn bush busy call calm came camp card care
case cash cast cell chat chip city club coal coat code cold come cook cool cope copy core cost crew crop dark data
date dawn days dead deal dean dear debt deep deny desk dial diet disc disk does done door dose down draw drew drop
drug dual duke dust duty each earn ease east easy edge else even ever evil exit face fact fail fair fall farm fast
fate fear feed feel feet fell felt file fill film find fine fire firm fish five flat flow food foot ford form fort
four free from fuel full fund gain game gate gave gear gene gift girl give glad goal goes gold golf gone good gray
grew grey grow gulf hair half hall hand hang hard harm hate have head hear heat held hell help here hero high hill
hire hold hole holy home hope host hour huge hung hunt hurt idea inch into iron item jack jane jean john join jump
jury just keen keep kent kept kick kill kind king knee knew know lack lady laid lake land lane last late lead left
less life lift like line link list live load loan lock logo long look lord lose loss lost love luck made mail main
make male many mark mass matt meal mean meat meet menu mere mike mile milk mill mind mine miss mode mood moon more
most move much must name navy near neck need news next nice nick nine none nose note okay once only open oral over
pace pack page paid pain pair palm park part pass past path peak pick pink pipe plan play plot plug plus poll pool
poor port post pull pure push race rail rain rank rare rate read real rear rely rent rest rice rich ride ring rise
risk road rock role roll roof room root rose rule rush safe said sake sale salt same sand save seat seed seek seem
seen self sell send sent ship shop shot show shut sick side sign site size skin slip slow snow soft soil sold sole
some song soon sort soul spot star stay step stop such suit sure take tale talk tall tank tape task team tech tell
tend term test text than that them then they thin this thus till time tiny told tone took tool tour town tree trip
true tune turn twin type unit upon used user vary vast very vice view vote wage wait wake walk wall want ward warm
wash wave ways weak wear week well went were west what when whom wide wife wild will wind wine wing wire wise wish
with wood word wore work yard yeah year your zero zone apple banana cherry garden window pencil rocket silver
""".split()


class LastLettersTask(Task):
    """Last-letter concatenation with exact step labels (docs/method.md §8 small-scale study).

    Args:
        min_words / max_words: words per TRAIN problem (paper: 2-10).
        heldout_min_words / heldout_max_words: words per HELD-OUT problem (paper: 2-12).
        split_seed / heldout_percent: see :class:`~tango_steps.tasks.base.Task`.
    """

    name = "last_letters"

    def __init__(
        self,
        min_words: int = 2,
        max_words: int = 10,
        heldout_min_words: int = 2,
        heldout_max_words: int = 12,
        split_seed: int = 0,
        heldout_percent: int = 20,
    ) -> None:
        super().__init__(split_seed, heldout_percent)
        for lo, hi, which in ((min_words, max_words, ""), (heldout_min_words, heldout_max_words, "heldout_")):
            if not 1 <= lo <= hi <= 50:
                raise ValueError(f"need 1 <= {which}min_words <= {which}max_words <= 50, got {lo}, {hi}")
        self.min_words, self.max_words = min_words, max_words
        self.heldout_min_words, self.heldout_max_words = heldout_min_words, heldout_max_words

    def _draw(self, rng: random.Random, split: str) -> Problem:
        lo, hi = (
            (self.min_words, self.max_words) if split == "train" else (self.heldout_min_words, self.heldout_max_words)
        )
        return self.make_problem([rng.choice(WORDS) for _ in range(rng.randint(lo, hi))])

    def make_problem(self, words: list[str]) -> Problem:
        """The problem and gold solution for a list of words (docs/method.md §8)."""
        question = "Concatenate the last letters of: " + " ".join(words)
        steps, acc = [], ""
        for w in words:
            acc += w[-1]
            steps.append(f"{w} -> {w[-1]} -> {acc}")
        return Problem(
            id=problem_id(self.name, question), question=question, answer=acc, steps=steps, meta={"words": words}
        )

    def split_step(self, step: str) -> tuple[str, str] | None:
        """``"cherry -> y -> eay"`` -> ``("cherry ->", "y -> eay")``; None without ``->`` (docs/method.md §2)."""
        word, arrow, rest = step.strip().partition("->")
        return (word.strip() + " ->", rest.strip()) if arrow and word.strip() else None

    def _step_ok(self, problem: Problem, k: int, step: str) -> bool:
        m = _STEP.match(step)
        if m is None:
            return False
        words = problem.meta["words"]
        want = "".join(w[-1] for w in words[: k + 1])
        return (m.group(1), m.group(2), m.group(3)) == (words[k], words[k][-1], want)
