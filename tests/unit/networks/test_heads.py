import pytest
import torch

from thyroid_monai.networks.heads import (
    OrdinalHead,
    cumulative_targets,
    ordinal_log_probabilities,
)


@pytest.mark.parametrize("link", ["coral", "cumulative_link"])
def test_ordinal_heads_start_from_the_uniform_distribution(link):
    head = OrdinalHead(8, 5, link)
    with torch.no_grad():
        head.score.weight.zero_()
    probabilities = ordinal_log_probabilities(head(torch.randn(3, 8))).exp()
    torch.testing.assert_close(probabilities, torch.full((3, 5), 0.2))


def test_cumulative_link_keeps_the_cumulative_probabilities_ordered():
    head = OrdinalHead(4, 6, "cumulative_link")
    with torch.no_grad():
        head.gap_parameters.copy_(torch.tensor([-5.0, 3.0, -1.0, 2.0]))
    assert bool((head.cutpoints()[1:] > head.cutpoints()[:-1]).all())
    above = torch.sigmoid(head(torch.randn(10, 4)))
    assert bool((above[:, 1:] <= above[:, :-1]).all())


def test_class_probabilities_from_cumulative_logits():
    # P(y > 0) = 0.8, P(y > 1) = 0.5, P(y > 2) = 0.1  ->  P(y = k) = 0.2, 0.3, 0.4, 0.1
    logits = torch.logit(torch.tensor([[0.8, 0.5, 0.1]]))
    torch.testing.assert_close(
        ordinal_log_probabilities(logits).exp(), torch.tensor([[0.2, 0.3, 0.4, 0.1]])
    )
    # an unordered (CORAL) head: the negative difference is floored, the rest renormalised
    unordered = ordinal_log_probabilities(torch.logit(torch.tensor([[0.3, 0.6]]))).exp()
    assert float(unordered.min()) >= 0.0
    torch.testing.assert_close(unordered.sum(dim=1), torch.ones(1))


def test_cumulative_targets_of_class_distributions():
    distribution = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    torch.testing.assert_close(
        cumulative_targets(distribution), torch.tensor([[1.0, 1.0, 0.0], [0.75, 0.5, 0.25]])
    )


def test_ordinal_head_rejects_bad_options():
    with pytest.raises(ValueError, match="at least 2"):
        OrdinalHead(4, 1)
    with pytest.raises(ValueError, match="ordinal link"):
        OrdinalHead(4, 3, "probit")  # type: ignore[arg-type]
