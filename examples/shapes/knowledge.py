"""Real-world entities with a visual colour and shape, and the knowledge graph built over them.

Every entity has exactly one colour and one shape from the world's vocabularies (see ``palette``).
A fixed quarter of them is *held out*: those entities never appear in an image caption; they exist
only in the knowledge graph, so a model can only draw them through their knowledge-graph vectors.
Every held-out entity shares its (colour, shape) pair with at least one seen entity.
"""

from __future__ import annotations

from dataclasses import dataclass

from .palette import BACKGROUNDS, COLOURS, SHAPES


@dataclass(frozen=True)
class Entity:
    name: str
    colour: str
    shape: str
    category: str
    held_out: bool = False


def _e(name: str, colour: str, shape: str, category: str, held_out: bool = False) -> Entity:
    return Entity(name, colour, shape, category, held_out)


ENTITIES: tuple[Entity, ...] = (
    # 圆形
    _e("番茄", "红色", "圆形", "蔬菜"),
    _e("苹果", "红色", "圆形", "水果"),
    _e("樱桃", "红色", "圆形", "水果", held_out=True),
    _e("红灯", "红色", "圆形", "交通信号灯"),
    _e("太阳", "红色", "圆形", "天体"),
    _e("橙子", "橙色", "圆形", "水果"),
    _e("橘子", "橙色", "圆形", "水果", held_out=True),
    _e("篮球", "橙色", "圆形", "球类"),
    _e("柠檬", "黄色", "圆形", "水果"),
    _e("网球", "黄色", "圆形", "球类", held_out=True),
    _e("月亮", "黄色", "圆形", "天体"),
    _e("硬币", "黄色", "圆形", "物品"),
    _e("黄灯", "黄色", "圆形", "交通信号灯"),
    _e("西瓜", "绿色", "圆形", "水果"),
    _e("青柠", "绿色", "圆形", "水果", held_out=True),
    _e("豌豆", "绿色", "圆形", "蔬菜"),
    _e("绿灯", "绿色", "圆形", "交通信号灯"),
    _e("蓝莓", "蓝色", "圆形", "水果"),
    _e("地球", "蓝色", "圆形", "天体"),
    _e("海王星", "蓝色", "圆形", "天体", held_out=True),
    _e("葡萄", "紫色", "圆形", "水果"),
    _e("李子", "紫色", "圆形", "水果", held_out=True),
    _e("茄子", "紫色", "圆形", "蔬菜"),
    # 正方形
    _e("骰子", "红色", "正方形", "玩具"),
    _e("红包", "红色", "正方形", "物品"),
    _e("砖块", "橙色", "正方形", "建材"),
    _e("便利贴", "黄色", "正方形", "文具"),
    _e("奶酪片", "黄色", "正方形", "食物", held_out=True),
    _e("黑板", "绿色", "正方形", "文具"),
    _e("魔方", "蓝色", "正方形", "玩具"),
    _e("瓷砖", "蓝色", "正方形", "建材", held_out=True),
    _e("紫菜", "紫色", "正方形", "食物"),
    # 三角形
    _e("三角警示牌", "红色", "三角形", "交通标志"),
    _e("草莓", "红色", "三角形", "水果", held_out=True),
    _e("披萨", "橙色", "三角形", "食物"),
    _e("帐篷", "橙色", "三角形", "物品"),
    _e("金字塔", "黄色", "三角形", "建筑"),
    _e("警告标志", "黄色", "三角形", "交通标志"),
    _e("三明治", "黄色", "三角形", "食物"),
    _e("玉米片", "黄色", "三角形", "食物", held_out=True),
    _e("粽子", "绿色", "三角形", "食物"),
    _e("圣诞树", "绿色", "三角形", "植物", held_out=True),
    _e("三角板", "蓝色", "三角形", "文具"),
    # 星形
    _e("五角星", "红色", "星形", "符号"),
    _e("海星", "橙色", "星形", "动物"),
    _e("星星", "黄色", "星形", "天体"),
    _e("杨桃", "黄色", "星形", "水果", held_out=True),
    _e("秋葵", "绿色", "星形", "蔬菜"),
    _e("蓝星花", "蓝色", "星形", "植物"),
    _e("桔梗花", "紫色", "星形", "植物"),
)

ENTITY_BY_NAME: dict[str, Entity] = {e.name: e for e in ENTITIES}

CATEGORY_PARENTS: dict[str, str] = {
    "水果": "食物",
    "蔬菜": "食物",
    "食物": "物体",
    "天体": "自然",
    "植物": "自然",
    "动物": "自然",
    "交通信号灯": "交通设施",
    "交通标志": "交通设施",
    "交通设施": "物体",
    "球类": "运动器材",
    "运动器材": "物体",
    "玩具": "物体",
    "文具": "物体",
    "建材": "物体",
    "建筑": "物体",
    "物品": "物体",
    "符号": "物体",
}

WARM_COLOURS = frozenset({"红色", "橙色", "黄色"})


def seen_entities() -> list[Entity]:
    return [e for e in ENTITIES if not e.held_out]


def held_out_entities() -> list[Entity]:
    return [e for e in ENTITIES if e.held_out]


def build_triples() -> list[tuple[str, str, str]]:
    """All (head, relation, tail) triples of the graph, in a fixed order.

    Entities link to their colour, shape and category; categories form a small is-a tree; colour
    and shape nodes are typed and linked to each other (warm/cool tone, neighbouring hues, corner
    counts), so that TransE sees structure beyond the attribute edges.
    """
    triples: list[tuple[str, str, str]] = []
    for e in ENTITIES:
        triples.append((e.name, "颜色", e.colour))
        triples.append((e.name, "形状", e.shape))
        triples.append((e.name, "类别", e.category))
    for child, parent in CATEGORY_PARENTS.items():
        triples.append((child, "上位类", parent))
    for c in COLOURS:
        triples.append((c.name, "类型", "颜色"))
        triples.append((c.name, "色调", "暖色" if c.name in WARM_COLOURS else "冷色"))
    for left, right in zip(COLOURS, COLOURS[1:], strict=False):
        triples.append((left.name, "相邻色", right.name))
    for b in BACKGROUNDS:
        triples.append((b.name, "类型", "颜色"))
        triples.append((b.name, "色调", "无彩色"))
    for s in SHAPES:
        triples.append((s.name, "类型", "形状"))
        triples.append((s.name, "角的数量", s.corners))
    return triples


def graph_nodes(triples: list[tuple[str, str, str]]) -> list[str]:
    """Every node of the graph, in order of first appearance (entities first)."""
    nodes: dict[str, None] = {}
    for head, _, tail in triples:
        nodes.setdefault(head, None)
        nodes.setdefault(tail, None)
    return list(nodes)


def graph_relations(triples: list[tuple[str, str, str]]) -> list[str]:
    relations: dict[str, None] = {}
    for _, relation, _ in triples:
        relations.setdefault(relation, None)
    return list(relations)
