"""Stand-in of SD.Next's modules.shared: the diffusers-backend flag, the loaded pipelines and the job state.

As in SD.Next, ``state.begin`` (called for every pipeline call) resets the step counter, and the pass's
step count is only learnt when the first step ends (diffusers_callback).
"""

native = True  # SD.Next's backend == Backend.DIFFUSERS


class State:
    def __init__(self):
        self.reset()

    def reset(self):
        self.interrupted = False
        self.skipped = False
        self.begin()

    def begin(self):
        self.sampling_step = 0
        self.sampling_steps = 0


state = State()
sd_model = None  # the loaded pipeline
sd_refiner = None
