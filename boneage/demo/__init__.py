"""Synthetic hand radiographs with known bone age and ground-truth regions.

SYNTHETIC DATA, NOT PATIENT IMAGES. This module draws cartoon-like but anatomically laid out
left-hand PA radiographs (bright bones on darker soft tissue on a dark background) whose
*skeletal maturity* follows the label. It is the embedded default cohort of the pipeline
(`boneage demo-cohort`) and the ground truth the localization tests compare CAM boxes with.

What is drawn (left hand, palm down, thumb on the image's right, forearm entering from the
bottom edge):

- radius and ulna with their distal epiphyses;
- the eight carpal bones, each appearing at its own ossification age (capitate, hamate,
  triquetrum, lunate, trapezium, trapezoid, scaphoid, pisiform, in that order) as a small
  round nucleus that grows into its adult size and shape, so the carpals crowd together
  with age;
- five metacarpals and 14 phalanges (thumb: proximal + distal; fingers: proximal, middle,
  distal). Each has one epiphysis (metacarpals 2-5 at the head, all others at the base)
  that appears as a separate cap, widens, approaches its shaft as the physis (gap) narrows,
  and finally fuses;
- a soft-tissue silhouette (fingers, palm, thenar eminence, wrist, forearm);
- an "L" side marker in a corner outside the hand.

Maturity is the male-equivalent skeletal age in years (:func:`skeletal_maturity`): girls
mature faster (about 1-2 years earlier at puberty). Everything that changes with age is a
function of maturity only (:func:`ossified_carpals`, :func:`carpal_size`,
:func:`physis_state`, bone width), plus a modest growth of the whole skeleton that is
drowned by a random global scale. Exposure levels (background, soft tissue, bone gain),
gamma, display window, noise, blur, rotation, position and scale are random and independent
of age, and each image's mean is set to a random target so that the growing amount of bone
does not raise it: over a cohort, Pearson r(age, mean intensity) is about 0 (|r| < 0.1).
The global standard deviation still rises with the amount of (bright) bone, r ~ 0.3: that
cue *is* bone maturity. The image size never depends on age.

Ground-truth boxes (pixel coordinates of the written PNG, x = column, y = row, x1/y1
exclusive), computed from masks rendered with the same transform as the image:

- ``hand``: the soft-tissue silhouette of fingers, palm and wrist, cut 12 mm (canonical adult
  scale) proximal to the radial physis, so it includes the distal ends (epiphyses and
  metaphyses) of radius and ulna but not the forearm;
- ``r1``: the carpal region = the full anatomical extent of all eight carpal bones plus the
  distal epiphyses of radius and ulna, whether or not they are ossified yet (a cartilaginous
  bone occupies its place before it shows on a radiograph), so the box is also defined for
  infants with no visible carpal bone;
- ``r2``: the metacarpals and phalanges of all five rays (full anatomical extent, epiphyses
  included).

Modules: anatomy (maturity model, canonical bones), draw (primitives), render (one
image), cohort (a cohort directory). Public API: :func:`make_demo_cohort` (writes a
cohort directory), :func:`render_hand` (one image in memory), and the maturity functions
above.
"""

from boneage.demo.anatomy import (
    ASPECT,
    BOX_COLUMNS,
    CARPALS,
    LABEL_COLUMNS,
    carpal_size,
    image_shape,
    ossified_carpals,
    physis_state,
    skeletal_maturity,
)
from boneage.demo.cohort import make_demo_cohort
from boneage.demo.render import RenderedHand, render_hand

__all__ = [
    "ASPECT",
    "BOX_COLUMNS",
    "CARPALS",
    "LABEL_COLUMNS",
    "RenderedHand",
    "carpal_size",
    "image_shape",
    "make_demo_cohort",
    "ossified_carpals",
    "physis_state",
    "render_hand",
    "skeletal_maturity",
]
