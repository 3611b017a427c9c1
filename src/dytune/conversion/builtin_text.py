"""A small built-in calibration set: short instruction/answer pairs in plain English, written for dytune.

Used when a conversion is given no calibration data. Real data from the target domain is better;
this only has to exercise the activations a chat model sees (prose, lists, code, numbers, dialogue).
"""

from __future__ import annotations

BUILTIN_PAIRS: list[tuple[str, str]] = [
    ("Give three tips for staying healthy.",
     "1. Eat a balanced diet with plenty of vegetables, fruit and whole grains.\n2. Exercise regularly: even a "
     "brisk thirty-minute walk most days helps your heart and mood.\n3. Sleep seven to nine hours a night and "
     "keep a regular schedule."),
    ("Explain what a hash table is to a new programmer.",
     "A hash table stores key-value pairs. It runs each key through a hash function that turns it into a "
     "number, and uses that number to pick a slot in an array. Looking a key up repeats the calculation, so "
     "on average finding, adding or removing an entry takes constant time, whatever the table's size."),
    ("Write a Python function that returns the n-th Fibonacci number.",
     "```python\ndef fibonacci(n: int) -> int:\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
     "    return a\n```\nThe loop keeps only the last two numbers, so it runs in O(n) time and O(1) memory."),
    ("What causes the seasons on Earth?",
     "The seasons come from the tilt of Earth's axis, about 23.5 degrees. As Earth orbits the Sun, each "
     "hemisphere spends part of the year tilted towards it, getting more direct sunlight and longer days "
     "(summer), and part tilted away (winter). The distance to the Sun changes little and is not the cause."),
    ("Summarise the plot of Romeo and Juliet in two sentences.",
     "Two young lovers from feuding families in Verona marry in secret. A chain of misunderstandings ends "
     "with both taking their own lives, which finally reconciles their families."),
    ("Translate 'Where is the train station?' into French and Spanish.",
     "French: « Où est la gare ? »\nSpanish: «¿Dónde está la estación de tren?»"),
    ("If a shirt costs $25 after a 20% discount, what was the original price?",
     "The discounted price is 80% of the original, so the original price is 25 / 0.8 = $31.25."),
    ("Write a short, polite email declining a meeting invitation.",
     "Subject: Re: Project sync on Thursday\n\nHi Maria,\n\nThank you for the invitation. Unfortunately I have "
     "a conflict on Thursday afternoon and won't be able to attend. Could you share the notes afterwards? I'm "
     "happy to follow up on anything that needs my input.\n\nBest regards,\nSam"),
    ("What is the difference between weather and climate?",
     "Weather is the state of the atmosphere at a given place and time: today's rain or tomorrow's heat. "
     "Climate is the long-term pattern of weather in a region, usually averaged over thirty years or more."),
    ("List the planets of the solar system in order from the Sun.",
     "Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus and Neptune."),
    ("How do I reverse a list in JavaScript without changing the original?",
     "Use `const reversed = [...items].reverse();` or, in modern engines, `items.toReversed()`. Both leave "
     "`items` untouched, while `items.reverse()` reverses the array in place."),
    ("Why is the sky blue?",
     "Sunlight contains all colours. Air molecules scatter short wavelengths far more than long ones "
     "(Rayleigh scattering), so blue light is scattered across the whole sky and reaches our eyes from every "
     "direction, while the Sun itself looks slightly yellow."),
]


def builtin_calibration_texts(tokenizer=None) -> list[str]:  # noqa: ANN001 - any HF tokenizer
    """The built-in pairs rendered as training renders chats (`calibration_data.render_chat`: the tokenizer's
    template, or dytune's default one for base models); plain text without a tokenizer."""
    from dytune.conversion.calibration_data import render_chat

    texts = []
    for question, answer in BUILTIN_PAIRS:
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        texts.append(render_chat(messages, tokenizer) if tokenizer is not None else f"{question}\n\n{answer}")
    return texts
