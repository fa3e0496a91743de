"""Word lists for the simulated practices: UK names, towns and streets.

Kept apart from the generator so the generator reads as logic, not as data. Contact data is
drawn from ranges reserved for fiction (example.com, Ofcom drama numbers, NHS 999 test
numbers, HMRC's QQ prefix), so no generated record can point at a real person.
"""

from __future__ import annotations

# The lists are packed several to a line on purpose: one name per line would bury the module.
# fmt: off
FEMALE_FIRST_NAMES: tuple[str, ...] = (
    "Olivia", "Amelia", "Isla", "Ava", "Emily", "Sophia", "Grace", "Lily", "Freya", "Mia",
    "Evie", "Ella", "Poppy", "Charlotte", "Isabella", "Sienna", "Daisy", "Phoebe", "Alice",
    "Florence", "Ruby", "Harriet", "Eleanor", "Matilda", "Rosie", "Lucy", "Sarah", "Emma",
    "Rachel", "Helen", "Claire", "Joanne", "Karen", "Susan", "Margaret", "Patricia", "Fiona",
    "Niamh", "Aisha", "Priya",
)
MALE_FIRST_NAMES: tuple[str, ...] = (
    "Oliver", "George", "Noah", "Arthur", "Harry", "Leo", "Muhammad", "Jack", "Charlie",
    "Oscar", "Jacob", "Henry", "Thomas", "Freddie", "Alfie", "Theo", "William", "Archie",
    "Joshua", "James", "Samuel", "Daniel", "David", "Michael", "Paul", "Mark", "Richard",
    "Andrew", "Stephen", "Peter", "Robert", "John", "Ian", "Gareth", "Callum", "Rhys",
    "Euan", "Kieran", "Ravi", "Tariq",
)
SURNAMES: tuple[str, ...] = (
    "Smith", "Jones", "Williams", "Taylor", "Brown", "Davies", "Evans", "Wilson", "Thomas",
    "Johnson", "Roberts", "Robinson", "Thompson", "Wright", "Walker", "White", "Edwards",
    "Hughes", "Green", "Hall", "Lewis", "Harris", "Clarke", "Patel", "Jackson", "Wood",
    "Turner", "Martin", "Cooper", "Hill", "Ward", "Morris", "Moore", "Clark", "Lee", "King",
    "Baker", "Harrison", "Morgan", "Allen", "James", "Scott", "Phillips", "Watson", "Davis",
    "Parker", "Price", "Bennett", "Young", "Griffiths", "Mitchell", "Kelly", "Cook",
    "Carter", "Richardson", "Bailey", "Collins", "Bell", "Shaw", "Murphy", "Khan", "Begum",
    "Ali", "Campbell", "Stewart", "MacDonald", "O'Brien", "Fraser",
)
NICKNAMES: dict[str, str] = {
    "William": "Will", "James": "Jim", "Robert": "Rob", "Richard": "Rich", "Thomas": "Tom",
    "Samuel": "Sam", "Daniel": "Dan", "Michael": "Mike", "Andrew": "Andy", "Stephen": "Steve",
    "Margaret": "Maggie", "Patricia": "Trish", "Charlotte": "Lottie", "Eleanor": "Ellie",
    "Isabella": "Bella", "Florence": "Flo", "Harriet": "Hattie", "Matilda": "Tilly",
}
TOWNS: tuple[tuple[str, str, str], ...] = (
    # (town, county, postcode area)
    ("Harrogate", "North Yorkshire", "HG1"),
    ("Leeds", "West Yorkshire", "LS6"),
    ("York", "North Yorkshire", "YO1"),
    ("Bath", "Somerset", "BA1"),
    ("Cheltenham", "Gloucestershire", "GL50"),
    ("Chester", "Cheshire", "CH1"),
    ("Durham", "County Durham", "DH1"),
    ("Exeter", "Devon", "EX4"),
    ("Norwich", "Norfolk", "NR2"),
    ("Reading", "Berkshire", "RG1"),
    ("Shrewsbury", "Shropshire", "SY1"),
    ("Winchester", "Hampshire", "SO23"),
)
STREETS: tuple[str, ...] = (
    "High Street", "Station Road", "Church Lane", "Victoria Road", "Park Avenue",
    "Mill Lane", "The Green", "Queens Road", "Kings Road", "Manor Close", "Acacia Avenue",
    "Orchard Way", "Springfield Road", "Chapel Street", "Market Place", "Grange Road",
)
PRACTICE_SUFFIXES: tuple[str, ...] = (
    "Dental Care", "Dental Practice", "Smile Studio", "Family Dentistry", "Dental Centre",
)
# fmt: on
