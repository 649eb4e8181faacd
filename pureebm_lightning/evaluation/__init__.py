"""The paper's evaluation protocol as a command (`pureebm evaluate`): settings, data, defenses, victims, report."""
