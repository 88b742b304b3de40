"""ABKD: distillation with the α-β divergence between the teacher's and the student's
next-token distributions.

    L = τ² · token mean of D_AB^(α,β)(p ‖ q),
    D_AB^(α,β)(p ‖ q) = −1/(αβ) Σ_v (p^α q^β − α/(α+β) p^(α+β) − β/(α+β) q^(α+β))

(`kdbench.divergences.alpha_beta`). α = 1, β = 0 is forward KL, α = 0, β = 1 reverse KL; α
moves how strongly the loss concentrates on the tokens where the student is far off
("hardness"), β how much it weights the student's own confident tokens ("confidence").
The defaults α = 0.2, β = 0.7 are the reference's GPT-2 scripts
(`distillation_llm/scripts/gpt2/ab/train_*.sh`: α + β = 0.9, α = 0.2); its OpenLLaMA script
uses α = 0.1, β = 0.8 (the variant {alpha: 0.1, beta: 0.8}). As there: temperature 1, the
references as data (`--type ab` draws no student samples, `--student-gen` notwithstanding),
and the student fine-tuned on the training split first (`CKPT=results/*/train/init/...`:
`starts_from = "sft"`). Its scripts also add a language-model loss on OpenWebText every step
(`--lm-data-dir`), which the suite leaves out, as for every method. Constants and sources:
docs/protocol.md, "ABKD".

Reference: Wang et al., ABKD: Pursuing a Proper Allocation of the Probability Mass in Knowledge
Distillation via α-β-Divergence, ICML 2025 (ghwang-s/abkd).
"""
from kdbench import divergences as D
from kdbench.method import Method as Base, check_temperature


class Method(Base):
    starts_from = "sft"  # its scripts start from the init checkpoint (docs/protocol.md)
    references = ["Wang et al., ABKD: Pursuing a Proper Allocation of the Probability Mass in "
                  "Knowledge Distillation via α-β-Divergence, ICML 2025"]

    def __init__(self, alpha: float = 0.2, beta: float = 0.7, temperature: float = 1.0):
        self.alpha, self.beta = D.check_alpha_beta(alpha, beta)
        self.temperature = check_temperature(temperature)

    def loss(self, student_logits, teacher_logits, mask, progress):
        return D.alpha_beta(student_logits, teacher_logits, mask, alpha=self.alpha, beta=self.beta,
                            temperature=self.temperature)
