"""Stand-in of modules.sd_samplers_common: the interrupt exception (a BaseException, as in A1111)."""


class InterruptedException(BaseException):
    pass
