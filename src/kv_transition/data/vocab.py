"""The closed vocabulary of the synthetic task generator.

The bundled reference model uses a word-level tokenizer built from ``vocabulary()``, so the
generator may emit only these words, single digits and punctuation. Text is pre-tokenized on
whitespace, on every punctuation character and on every digit, so each item here is a plain
run of letters (no hyphens, apostrophes or digits inside a word) or one punctuation character.

Key words, variable names and the needle/question template words are kept disjoint from the
haystack filler so that a needle is never echoed by the filler around it.
"""

from __future__ import annotations

PUNCTUATION = [".", ",", ":", "?", "="]
DIGITS = [str(d) for d in range(10)]

# Haystack grammar: sentences are built from these word classes (see synthetic._sentence).
DETERMINERS = ["The", "Every", "Each", "That", "This", "Our", "Her", "His", "Their", "My", "Your"]
NOUNS = """
river mountain village garden window table chair teacher student farmer doctor road bridge
market kitchen letter book story song city forest field ship harbor train station school
library museum painter writer child friend neighbor family house door wall roof lamp candle
clock bell coat hat shoe bag box basket bread cheese apple cup plate spoon knife boat island
lake hill valley cloud rain storm wind snow morning evening night winter summer meadow path
stone tree leaf flower grass seed horse dog cat bird fish sheep cow goat map note picture
mirror blanket pillow ladder fence gate well tower castle king queen soldier sailor baker
merchant poet singer dancer crowd team game lesson
""".split()
ADJECTIVES = """
old young quiet loud bright dark small large tall short warm cold wet dry green blue red
yellow white black brown gray gentle busy calm happy tired careful kind proud simple plain
heavy light narrow wide empty full clean dusty soft hard sweet bitter strange famous distant
""".split()
TRANSITIVE_VERBS = """
carried found watched painted opened closed cleaned followed visited repaired built moved
pushed pulled lifted dropped washed counted named helped saw heard held kept left met sold
bought brought wrote packed crossed climbed passed covered filled checked marked shared
""".split()
INTRANSITIVE_VERBS = """
waited slept laughed smiled rested arrived returned stayed walked ran sang danced worked
paused listened wandered waved nodded shivered whistled
""".split()
ADVERBS = """
slowly quickly quietly softly early again often later today yesterday together alone
happily gladly calmly carefully suddenly gently loudly outside away home
""".split()
PREPOSITIONS = """
near under behind beside across above below through along inside around past beyond toward
into over
""".split()
FILLER_GLUE = ["the", "was", "and", "but", "said", "that", "When"]

# Needle keys: single plain words (one word-level token each), never used as filler.
KEYS = """
falcon walrus orchid lantern compass saffron glacier pelican juniper cobalt marble thistle
quartz harpoon lobster magnolia nectar obsidian parsnip quiver raven sapphire tundra urchin
violin wombat yarrow zephyr almond badger cactus dolphin emerald fjord gazelle hazel iguana
jasmine kestrel lemur mango nutmeg otter panther quince radish salmon tulip umbrella vulture
willow zebra anchor beacon cinnamon dragonfly ember feather gondola hammock igloo jigsaw
kettle ladle meteor nebula oyster pumpkin riddle scarab trumpet velvet walnut xylophone
zucchini acorn bamboo coral garnet heron ivory jaguar koala lotus mammoth narwhal olive
penguin puffin rhubarb sequoia toucan turnip vanilla
""".split()

# Variable tracking names: upper-case words, none a substring of another, so RULER's
# substring match cannot credit one variable for another.
VARIABLE_NAMES = """
ALPHA BRAVO CHARLIE DELTA ECHO FOXTROT GOLF HOTEL INDIA JULIET KILO LIMA MIKE NOVEMBER OSCAR
QUEBEC ROMEO SIERRA TANGO UNIFORM VICTOR WHISKEY XRAY YANKEE ZULU GAMMA EPSILON KAPPA LAMBDA
OMICRON SIGMA OMEGA
""".split()

# Needles, questions and answer prefixes (synthetic.py) plus the prompt template around them
# (data/prompt.py), so the whole prompt the reference model sees is in the vocabulary.
TEMPLATE_WORDS = """
The One of the special magic number numbers for is are What all mentioned in provided text
VAR Find variables that assigned value above According to chain variable assignment they
Read below and answer question after it Question Answer
""".split()

# The reference model's functional answer formats (reference/formats.py): a cue sentence in
# the question selects a Python function or a JSON tool call as the answer.
FUNCTIONAL_PUNCTUATION = ["(", ")", "[", "]", "{", "}", '"']
FUNCTIONAL_WORDS = """
Answer with a Python function JSON tool call def answer return name lookup arguments key value
""".split()


def vocabulary() -> list[str]:
    """Every token the generator can emit, in a fixed order (token ids depend on it)."""
    groups = [PUNCTUATION, DIGITS, DETERMINERS, FILLER_GLUE, NOUNS, ADJECTIVES,
              TRANSITIVE_VERBS, INTRANSITIVE_VERBS, ADVERBS, PREPOSITIONS, KEYS,
              VARIABLE_NAMES, TEMPLATE_WORDS, FUNCTIONAL_PUNCTUATION, FUNCTIONAL_WORDS]
    # dict keeps first occurrence order: deterministic and duplicate-free
    return list(dict.fromkeys(word for group in groups for word in group))


def filler_words() -> set[str]:
    """Words the haystack may use; tests check keys and names stay out of it."""
    return set(DETERMINERS + FILLER_GLUE + NOUNS + ADJECTIVES + TRANSITIVE_VERBS
               + INTRANSITIVE_VERBS + ADVERBS + PREPOSITIONS)
