"""The install profiles: requirements/check_profiles.py's verdicts (CI runs the real pip dry runs) and the
profile names shared by the Makefile, setup.py, requirements/ and diffusion.extras."""
import importlib.metadata
import importlib.util
import os
import re

from diffusion.extras import PROFILES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("check_profiles", os.path.join(REPO, "requirements", "check_profiles.py"))
check_profiles = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_profiles)


def test_torch_and_cuda_wheels_and_moved_base_packages_fail_the_check():
    installed_pytest = importlib.metadata.version("pytest")
    bad = check_profiles.problems([
        ("torch", "2.7.0"), ("nvidia-cudnn-cu13", "9.20"), ("cuda-toolkit", "13.0.3"), ("triton", "3.5"),
        ("pytest", "1.0"),
    ])
    assert len(bad) == 5 and all("would install" in b for b in bad[:4])
    assert f"would change pytest {installed_pytest} -> 1.0" in bad[4]


def test_new_packages_the_project_itself_and_unchanged_versions_pass():
    assert check_profiles.problems([
        ("xformers", "0.0.35"), ("commoncanvas-recipes", "0.1.0"), ("pytest", importlib.metadata.version("pytest")),
        ("a-package-nobody-installed", "1.0"),
    ]) == []


def test_every_profile_has_a_requirements_file_a_setup_extra_and_a_makefile_name():
    makefile = open(os.path.join(REPO, "Makefile")).read()
    setup = open(os.path.join(REPO, "setup.py")).read()
    known = re.search(r"\$\(filter \$\(p\),([a-z ]+)\)", makefile).group(1).split()
    assert sorted(known) == sorted(PROFILES) == sorted(check_profiles.PROFILES)
    assert '("gpu", "cloud", "loggers", "test")' in setup
    for profile in PROFILES:
        args = check_profiles.profile_requirements([profile])
        assert args[-1].endswith(f"requirements/{profile}.txt") and os.path.isfile(args[-1])
        assert any(line.split("#")[0].strip() for line in open(args[-1]))
