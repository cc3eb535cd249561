"""Label sets of the EMT classification tasks, as the hub copies name them, with the names the prompt shows and the
synonyms the offline judge accepts.

The CIFAR names are the ``ClassLabel`` names of ``uoft-cs/cifar10`` / ``uoft-cs/cifar100`` (underscores become
spaces in the prompt). miniImageNet's 100 classes are the Ravi & Larochelle split (64 train + 16 val + 20 test
WordNet ids, checked to be ImageNet-1k classes); the shown name is one WordNet lemma (from timm's ImageNet table),
the other lemmas are synonyms.
"""

from __future__ import annotations

MNIST = tuple(str(d) for d in range(10))

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

CIFAR100 = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest",
    "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard",
    "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine", "possum",
    "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper",
    "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf",
    "woman", "worm",
)

CIFAR100_COARSE = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
    "household_furniture", "insects", "large_carnivores", "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes", "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates",
    "people", "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)

# (WordNet id, name shown, synonyms)
MINI_IMAGENET = (
    ("n01532829", "house finch", ("linnet",)),
    ("n01558993", "robin", ()),
    ("n01704323", "triceratops", ()),
    ("n01749939", "green mamba", ()),
    ("n01770081", "harvestman", ("daddy longlegs",)),
    ("n01843383", "toucan", ()),
    ("n01855672", "goose", ()),
    ("n01910747", "jellyfish", ()),
    ("n01930112", "nematode", ("nematode worm", "roundworm")),
    ("n01981276", "king crab", ("Alaskan king crab", "Alaska king crab")),
    ("n02074367", "dugong", ()),
    ("n02089867", "Walker hound", ()),
    ("n02091244", "Ibizan hound", ("Ibizan Podenco",)),
    ("n02091831", "Saluki", ("gazelle hound",)),
    ("n02099601", "golden retriever", ()),
    ("n02101006", "Gordon setter", ()),
    ("n02105505", "komondor", ()),
    ("n02108089", "boxer", ()),
    ("n02108551", "Tibetan mastiff", ()),
    ("n02108915", "French bulldog", ()),
    ("n02110063", "malamute", ("malemute",)),
    ("n02110341", "dalmatian", ("coach dog", "carriage dog")),
    ("n02111277", "Newfoundland", ()),
    ("n02113712", "miniature poodle", ()),
    ("n02114548", "white wolf", ("Canis lupus tundrarum",)),
    ("n02116738", "African hunting dog", ("hyena dog", "Cape hunting dog")),
    ("n02120079", "Arctic fox", ("white fox",)),
    ("n02129165", "lion", ("king of beasts",)),
    ("n02138441", "meerkat", ("mierkat",)),
    ("n02165456", "ladybug", ("ladybeetle", "lady beetle", "ladybird", "ladybird beetle")),
    ("n02174001", "rhinoceros beetle", ()),
    ("n02219486", "ant", ("emmet", "pismire")),
    ("n02443484", "black-footed ferret", ("ferret",)),
    ("n02457408", "three-toed sloth", ()),
    ("n02606052", "rock beauty", ()),
    ("n02687172", "aircraft carrier", ("carrier", "flattop", "attack aircraft carrier")),
    ("n02747177", "ashcan",
     ("trash can", "garbage can", "wastebin", "ash bin", "ash-bin", "ashbin", "dustbin", "trash barrel", "trash bin")),
    ("n02795169", "barrel", ("cask",)),
    ("n02823428", "beer bottle", ()),
    ("n02871525", "bookshop", ("bookstore", "bookstall")),
    ("n02950826", "cannon", ()),
    ("n02966193", "carousel", ("carrousel", "merry-go-round", "roundabout", "whirligig")),
    ("n02971356", "carton", ()),
    ("n02981792", "catamaran", ()),
    ("n03017168", "chime", ("bell", "gong")),
    ("n03047690", "clog", ("geta", "patten", "sabot")),
    ("n03062245", "cocktail shaker", ()),
    ("n03075370", "combination lock", ()),
    ("n03127925", "crate", ()),
    ("n03146219", "cuirass", ()),
    ("n03207743", "dishrag", ("dishcloth",)),
    ("n03220513", "dome", ()),
    ("n03272010", "electric guitar", ()),
    ("n03337140", "file cabinet", ("file", "filing cabinet")),
    ("n03347037", "fire screen", ("fireguard",)),
    ("n03400231", "frying pan", ("frypan", "skillet")),
    ("n03417042", "garbage truck", ("dustcart",)),
    ("n03476684", "hair slide", ()),
    ("n03527444", "holster", ()),
    ("n03535780", "horizontal bar", ("high bar",)),
    ("n03544143", "hourglass", ()),
    ("n03584254", "iPod", ()),
    ("n03676483", "lipstick", ("lip rouge",)),
    ("n03770439", "miniskirt", ("mini",)),
    ("n03773504", "missile", ()),
    ("n03775546", "mixing bowl", ()),
    ("n03838899", "oboe", ("hautboy", "hautbois")),
    ("n03854065", "organ", ("pipe organ",)),
    ("n03888605", "parallel bars", ("bars",)),
    ("n03908618", "pencil box", ("pencil case",)),
    ("n03924679", "photocopier", ()),
    ("n03980874", "poncho", ()),
    ("n03998194", "prayer rug", ("prayer mat",)),
    ("n04067472", "reel", ()),
    ("n04146614", "school bus", ()),
    ("n04149813", "scoreboard", ()),
    ("n04243546", "slot machine", ("one-armed bandit",)),
    ("n04251144", "snorkel", ()),
    ("n04258138", "solar dish", ("solar collector", "solar furnace")),
    ("n04275548", "spider web", ("spider's web",)),
    ("n04296562", "stage", ()),
    ("n04389033", "tank", ("army tank", "armored combat vehicle", "armoured combat vehicle")),
    ("n04418357", "theater curtain", ("theatre curtain",)),
    ("n04435653", "tile roof", ()),
    ("n04443257", "tobacco shop", ("tobacconist shop", "tobacconist")),
    ("n04509417", "unicycle", ("monocycle",)),
    ("n04515003", "upright piano", ("upright",)),
    ("n04522168", "vase", ()),
    ("n04596742", "wok", ()),
    ("n04604644", "worm fence", ("snake fence", "snake-rail fence")),
    ("n04612504", "yawl", ()),
    ("n06794110", "street sign", ()),
    ("n07584110", "consomme", ()),
    ("n07613480", "trifle", ()),
    ("n07697537", "hotdog", ("hot dog", "red hot")),
    ("n07747607", "orange", ()),
    ("n09246464", "cliff", ("drop", "drop-off")),
    ("n09256479", "coral reef", ()),
    ("n13054560", "bolete", ()),
    ("n13133613", "ear", ("spike", "capitulum")),
)
MINI_IMAGENET_NAMES = {wnid: name for wnid, name, _ in MINI_IMAGENET}

# Synonyms per shown label (documented in docs/tasks.md). Keep them unambiguous within their label set.
SYNONYMS = {
    "mnist": {
        digit: (word,)
        for digit, word in zip(
            MNIST, ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"), strict=True
        )
    },
    "cifar10": {
        "airplane": ("aeroplane", "plane", "aircraft", "jet"),
        "automobile": ("car",),
        "ship": ("boat",),
        "truck": ("lorry",),
    },
    "cifar100": {
        "couch": ("sofa",),
        "television": ("tv",),
        "motorcycle": ("motorbike",),
        "lawn mower": ("lawnmower",),
        "sweet pepper": ("bell pepper",),
        "telephone": ("phone",),
        "cattle": ("cow",),
        "streetcar": ("tram",),
        "aquarium fish": ("goldfish",),
    },
    "miniimagenet": {name: synonyms for _, name, synonyms in MINI_IMAGENET if synonyms},
}


def display_name(raw: str) -> str:
    """The name the prompt shows for a dataset's class name: a WordNet id becomes its lemma, "_" a space.

    >>> display_name("aquarium_fish"), display_name("n02110341")
    ('aquarium fish', 'dalmatian')
    """
    return MINI_IMAGENET_NAMES.get(raw, raw.replace("_", " "))
