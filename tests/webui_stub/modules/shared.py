"""Stand-in of modules.shared: the loaded model and the job state."""


class State:
    def __init__(self):
        self.reset()

    def reset(self):
        self.interrupted = False
        self.skipped = False
        self.sampling_step = 0
        self.sampling_steps = 0


state = State()
sd_model = None  # the loaded checkpoint; p.sd_model returns it, as in A1111
